"""Concurrency: runs in separate processes share one DuckDB file with 0 lock failures.

DuckDB allows one writer process per file. The IO manager opens a short-lived connection per
output or input and, when another process holds the file, retries with capped, jittered backoff
(``resources.connect_waiting_for_lock``), reporting ``duckdb_lock_retries`` on every output.
This test makes the contention certain: it holds the write lock itself until every run is waiting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from medtok_dagster.resources import (
    DUCKDB_FILE,
    DUCKDB_SCHEMA,
    LOCK_CONFLICT,
    connect_waiting_for_lock,
)
from medtok_dagster_tests.conftest import REPO

PARTITIONS = ["gimp_help", "kolaw_kobill"]
TIER1 = [
    "special_chars_report",
    "medical_notation",
    "user_added_tokens",
    "dictionary_terms_raw",
    "dictionary_terms",
    "dedicated_tokens",
    "medical_corpus",
]
"""Independent writers, and readers of other steps' tables (dictionary_terms, dedicated_tokens load theirs through the IO manager)."""
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
MULTIPROCESS = {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}}
WAITING = "is held by another process"
TIMEOUT_S = 400
"""Generous: the test takes under a minute on 2 idle cores, but other jobs on the machine slow every process."""
FAILURE_MARKERS = (LOCK_CONFLICT, "IOException")


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(database: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the DuckDB write lock for ``seconds`` (returns once it holds it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(database), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.stdout.close()
    return holder


def test_lock_wait_is_counted_then_bounded(tmp_path):
    database = tmp_path / DUCKDB_FILE
    holder = hold_lock(database, 1.5)
    conn, wait = connect_waiting_for_lock(str(database), {}, timeout_s=60)
    conn.close()
    holder.wait()
    assert wait.retries > 0 and 0.5 < wait.seconds < 10
    holder = hold_lock(database, 60)
    try:
        started = time.monotonic()
        with pytest.raises(duckdb.IOException, match=LOCK_CONFLICT):
            connect_waiting_for_lock(str(database), {}, timeout_s=1)
        assert 1 <= time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def launch(
    name: str, args: list[str], env: dict[str, str], logs: Path
) -> tuple[subprocess.Popen, Path]:
    """Start ``dagster asset materialize`` in its own process, its console log going to a file."""
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        command = [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "medtok_dagster.definitions",
            *args,
        ]
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        ), log


def wait_until_all_wait(runs: dict[str, tuple[subprocess.Popen, Path]], timeout_s: float) -> None:
    """Return once every run has logged that it waits for the lock; fail early if one exits (none can finish meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = {name: log.read_text(errors="replace") for name, (_, log) in runs.items()}
        if all(WAITING in text for text in logs.values()):
            return
        for name, (process, _) in runs.items():
            assert process.poll() is None, (
                f"{name} exited while the lock was held:\n{logs[name][-4000:]}"
            )
        assert time.monotonic() < deadline, "timed out waiting until every run waits for the lock"
        time.sleep(0.2)


def rows(con: duckdb.DuckDBPyConnection, table: str, partition: str | None) -> int:
    where = " where corpus = ?" if partition else ""
    return con.execute(
        f"select count(*) from {DUCKDB_SCHEMA}.{table}{where}", [partition] if partition else []
    ).fetchone()[0]


def persistent_instance(home: Path) -> dg.DagsterInstance:
    """The instance `make ui` sets up, its SQLite storages created once up front (as `dagster dev` does):
    several processes creating a fresh instance's tables at the same moment race each other."""
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.get_runs() == [] and instance.get_asset_records() == []
    return instance


def test_two_partition_runs_and_a_multiprocess_run_share_duckdb_with_no_lock_failure(
    tmp_path, data_dir, model_dir, gemma_dir
):
    home = tmp_path / "dagster_home"
    instance = persistent_instance(home)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MEDTOK_DATA_DIR": str(data_dir),
        "MEDTOK_MODEL_DIR": str(model_dir),
        "MEDTOK_BASE_MODEL": str(gemma_dir),
    }
    database = model_dir / DUCKDB_FILE
    holder = duckdb.connect(str(database))
    runs = {
        name: launch(
            name,
            [
                "--select",
                "general_corpus_sample",
                "--partition",
                name,
                "--config-json",
                json.dumps(IN_PROCESS),
            ],
            env,
            tmp_path,
        )
        for name in PARTITIONS
    }
    runs["tier1"] = launch(
        "tier1",
        ["--select", ",".join(TIER1), "--config-json", json.dumps(MULTIPROCESS)],
        env,
        tmp_path,
    )
    try:
        try:
            wait_until_all_wait(runs, TIMEOUT_S)
        finally:
            holder.close()
        for name, (process, log) in runs.items():
            assert process.wait(timeout=TIMEOUT_S) == 0, (
                f"{name} failed:\n{log.read_text(errors='replace')[-4000:]}"
            )
    finally:
        for process, _ in runs.values():
            process.kill()
            process.wait()

    records = instance.get_runs()
    assert len(records) == 3 and {r.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
    events = [event for record in records for event in instance.all_logs(record.run_id)]
    assert not [
        e.message for e in events if any(marker in (e.message or "") for marker in FAILURE_MARKERS)
    ]
    assert not [e for e in events if e.is_dagster_event and e.dagster_event.is_step_failure]
    materializations = [
        e.asset_materialization for e in events if e.asset_materialization is not None
    ]
    assert sorted((m.asset_key.path[-1], m.partition) for m in materializations) == sorted(
        [(name, None) for name in TIER1] + [("general_corpus_sample", p) for p in PARTITIONS]
    )
    assert sum(m.metadata["duckdb_lock_retries"].value for m in materializations) > 0
    with duckdb.connect(str(database), read_only=True) as con:
        for m in materializations:
            expected = m.metadata[
                "dagster/partition_row_count" if m.partition else "dagster/row_count"
            ].value
            assert rows(con, m.asset_key.path[-1], m.partition) == expected > 0, m.asset_key
        assert rows(con, "user_added_tokens", None) == 17
        assert (
            sorted(
                c
                for (c,) in con.execute(
                    f"select corpus from {DUCKDB_SCHEMA}.general_corpus_sample"
                ).fetchall()
            )
            == PARTITIONS
        )
