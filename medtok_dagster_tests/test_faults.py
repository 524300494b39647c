"""Faults: a writer killed mid-write, and an artifact replaced while someone reads it.

Each artifact kind (tokenizer directory, parquet file, adapter directory) is written by the real
production code in a child process that pauses inside the write, once its temporary sibling holds
part of the new version, and is then SIGKILLed: the kill point is chosen, not raced.
Killed training and a killed LLM describer resume: see ``test_training_assets.py`` and
``core/test_describer.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from medtok_dagster import layout
from medtok_dagster.assets import corpora, dedicated, tokenizers
from medtok_dagster.core import tokenizer_build, training
from medtok_dagster.core.corpus import read_lines_parquet, write_lines_parquet
from medtok_dagster.core.io import atomic_dir, atomic_write_json, remove_stale_temporaries
from medtok_dagster.resources import PathsResource, build_resources
from medtok_dagster_tests.conftest import REPO

CHILD = """
import sys
from pathlib import Path
from medtok_dagster_tests.test_faults import write_paused
write_paused(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
"""
PAUSE_S = 600


def write_tokenizer(source: Path, target: Path, version: int) -> None:
    """The tokenizer_variants write path: extended tokenizer and mapping, staged by ``atomic_dir``."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(source)
    tier1 = [f"▁시험토큰{version}", f"▁판{version}본", "▁혈당검사"]
    plan = tokenizer_build.plan_variant(
        base, "added_tokens", tier1, [], [], Counter(), budget=len(tier1)
    )
    with atomic_dir(target) as staging:
        tokenizer = tokenizer_build.build_extended_tokenizer(
            base, "added_tokens", plan.tier1, plan.selection, plan.merges, staging
        )
        atomic_write_json(
            staging / "token_mapping.json",
            tokenizer_build.token_mapping(len(base), tokenizer, "added_tokens"),
        )


def write_parquet(_: Path, target: Path, version: int) -> None:
    """The corpus sample write path."""
    write_lines_parquet([f"판본 {version}의 {i}번째 문장입니다." for i in range(2000)], target)


def write_adapter(source: Path, target: Path, version: int) -> None:
    """The initialized_model / trained_adapter write path: LoRA adapter and tokenizer, staged by ``atomic_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    base_len = len(tokenizer)
    tokenizer.add_tokens([f"▁어댑터{version}", "▁혈당검사"])
    new_ids = list(range(base_len, len(tokenizer)))
    model = AutoModelForCausalLM.from_pretrained(source)
    model.resize_token_embeddings(len(tokenizer))
    torch.manual_seed(version)
    peft_model = training.attach_lora(
        model, training.profile("embedded"), new_ids, "trainable_tokens"
    )
    with atomic_dir(target) as staging:
        training.save_adapter(peft_model, tokenizer, staging, new_ids, "trainable_tokens")
        atomic_write_json(staging / "init_info.json", {"version": version})


WRITERS: dict[str, Callable[[Path, Path, int], None]] = {
    "tokenizer": write_tokenizer,
    "parquet": write_parquet,
    "adapter": write_adapter,
}


def pause_at(owner: object, name: str, ready: Path, call_first: bool) -> None:
    """Replace ``owner.name`` so the process signals ``ready`` and then sleeps there until killed."""
    original = getattr(owner, name)

    def paused(*args: object, **kwargs: object) -> None:
        if call_first:
            original(*args, **kwargs)
        ready.touch()
        time.sleep(PAUSE_S)

    setattr(owner, name, paused)


def write_paused(kind: str, source: Path, target: Path, ready: Path) -> None:
    """Child process: write version 2 of ``kind``, stopping where part of it is on disk.

    tokenizer: after the base tokenizer's files, before the extended ones; adapter: after the
    adapter weights, before the tokenizer; parquet: after the bytes, before fsync and rename.
    """
    if kind == "parquet":
        pause_at(os, "fsync", ready, call_first=False)
    else:
        from transformers import PreTrainedTokenizerBase

        pause_at(PreTrainedTokenizerBase, "save_pretrained", ready, call_first=kind == "tokenizer")
    WRITERS[kind](source, target, 2)


def snapshot(path: Path) -> dict[str, str]:
    """Relative name → sha256 of every file under ``path`` (or of ``path`` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        ("." if f == path else f.relative_to(path).as_posix()): hashlib.sha256(
            f.read_bytes()
        ).hexdigest()
        for f in files
    }


def temporaries(target: Path) -> list[Path]:
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def kill_mid_write(kind: str, source: Path, target: Path, scratch: Path) -> Path:
    """Run :func:`write_paused` in a child, SIGKILL it at the pause and return its temporary sibling."""
    ready, log = scratch / f"{kind}.ready", scratch / f"{kind}.log"
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, str(source), str(target), str(ready)],
            cwd=REPO,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 180
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), (
            f"writer never reached its pause:\n{log.read_text(errors='replace')[-3000:]}"
        )
        staged = temporaries(target)
        assert len(staged) == 1 and ".tmp-" in staged[0].name, staged
        assert remove_stale_temporaries(target.parent) == 0, (
            "a live writer's staging must be left alone"
        )
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return staged[0]


@pytest.mark.parametrize("kind", ["tokenizer", "parquet", "adapter"])
def test_killed_writer_leaves_previous_version_and_next_write_cleans_up(kind, request, tmp_path):
    source = {"tokenizer": "gemma_dir", "adapter": "tiny_gemma_dir"}.get(kind)
    source_dir = request.getfixturevalue(source) if source else tmp_path
    target = (
        tmp_path
        / "artifacts"
        / {
            "tokenizer": "medgemma_dedicated",
            "parquet": "sample.parquet",
            "adapter": "ded_medical",
        }[kind]
    )
    WRITERS[kind](source_dir, target, 1)
    previous = snapshot(target)

    leftover = kill_mid_write(kind, source_dir, target, tmp_path)

    assert snapshot(target) == previous, (
        "the previous version must be byte-identical, with no file added or missing"
    )
    assert leftover.exists() and (leftover.is_file() or any(leftover.iterdir())), (
        "the kill happened mid-write"
    )
    WRITERS[kind](source_dir, target, 3)
    assert temporaries(target) == [], "the next write removes the killed writer's temporary"
    current = snapshot(target)
    assert current != previous and current.keys() == previous.keys()
    if kind == "parquet":
        assert read_lines_parquet(target)[0].startswith("판본 3의")


@dg.asset(name="candidate_tokens", group_name="vocab")
def candidate_tokens_stub() -> pd.DataFrame:
    """Stands in for the vocab stages: the `dedicated` variant takes no candidates from it."""
    return pd.DataFrame({"token": ["혈당검사"], "tier": ["medical"]})


def stats_budget(variant_dir: Path) -> int | None:
    """The budget recorded in a complete variant directory, or ``None`` if any expected file is missing."""
    try:
        names = set(os.listdir(variant_dir))
        if (
            not {
                "tokenizer.json",
                "tokenizer_config.json",
                "token_mapping.json",
                "dedicated_stats.json",
            }
            <= names
        ):
            return None
        return json.loads((variant_dir / "dedicated_stats.json").read_text(encoding="utf-8"))[
            "budget"
        ]
    except (OSError, ValueError):
        return None


class Reader(threading.Thread):
    """Keeps opening the variant directory during a re-materialization, recording what it finds."""

    def __init__(self, variant_dir: Path):
        super().__init__(daemon=True)
        self.variant_dir = variant_dir
        self.seen: Counter[int | None] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.seen[stats_budget(self.variant_dir)] += 1
            time.sleep(0.002)


def test_rematerializing_a_tokenizer_variant_swaps_the_directory_atomically(
    data_dir, model_dir, gemma_dir
):
    resources = build_resources(str(data_dir), str(model_dir), str(gemma_dir))
    upstream = [
        *dg.load_assets_from_modules([dedicated]),
        corpora.medical_corpus,
        candidate_tokens_stub,
    ]
    assets = [*upstream, tokenizers.tokenizer_variants]
    assert dg.materialize(
        assets, selection=dg.AssetSelection.assets(*upstream), resources=resources
    ).success

    def variant(budget: int) -> dg.ExecuteInProcessResult:
        config = {"ops": {"tokenizer_variants": {"config": {"budgets": {"dedicated": budget}}}}}
        return dg.materialize(
            assets,
            selection=["tokenizer_variants"],
            partition_key="dedicated",
            resources=resources,
            run_config=config,
        )

    final = layout.variant_dir(
        PathsResource(data_dir=str(data_dir), model_dir=str(model_dir)), "dedicated"
    )
    assert variant(4000).success and stats_budget(final) == 4000
    old_files = snapshot(final)
    held = {name: (final / name).open("rb") for name in old_files}
    old_inode = final.stat().st_ino
    reader = Reader(final)
    reader.start()
    try:
        assert variant(3000).success
    finally:
        reader.stop.set()
        reader.join()
    for name, handle in held.items():
        assert hashlib.sha256(handle.read()).hexdigest() == old_files[name], (
            f"{name} was changed in place"
        )
        handle.close()

    assert final == model_dir / "tokenizer" / "medgemma_dedicated"
    assert stats_budget(final) == 3000 and final.stat().st_ino != old_inode
    assert snapshot(final).keys() == old_files.keys()
    assert temporaries(final) == []
    assert None not in reader.seen and reader.seen[4000] > 0, (
        f"a reader saw a missing or partial directory: {reader.seen}"
    )
