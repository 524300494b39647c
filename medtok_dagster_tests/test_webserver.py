"""`make ui` for real: dagster dev on 127.0.0.1, runs launched through GraphQL and by the automation daemon, the UI rendered."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from medtok_dagster_tests.conftest import copy_sample_data, empty_model_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")

TIER1 = [
    "special_chars_report",
    "medical_notation",
    "user_added_tokens",
    "dictionary_terms_raw",
    "dictionary_terms",
    "dedicated_tokens",
]
CHECKS_QUERY = """
query Checks($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } } }
  }
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def non_loopback_address() -> str | None:
    """This machine's outbound IPv4 address, if it has one besides loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(what)


def server_up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok
    except requests.RequestException:
        return False


@contextmanager
def running_dagster_dev(
    tmp_path: Path, data_dir: Path, model_dir: Path, **settings: str
) -> Iterator[tuple[int, Path]]:
    """`dagster dev` (webserver + daemon) exactly as `make ui` starts it, on a free loopback port.

    Yields the port and the instance home; ``settings`` are extra ``MEDTOK_*`` variables.
    """
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MEDTOK_DATA_DIR": str(data_dir),
        "MEDTOK_MODEL_DIR": str(model_dir),
        **settings,
    }
    dagster = Path(sys.executable).parent / "dagster"
    log = (tmp_path / "dagster_dev.log").open("w")
    process = subprocess.Popen(
        [
            str(dagster),
            "dev",
            "-m",
            "medtok_dagster.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: server_up(port), 180, "webserver did not start")
        yield port, home
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def dagster_dev(tmp_path, data_dir, model_dir):
    with running_dagster_dev(tmp_path, data_dir, model_dir) as (port, _):
        yield port, model_dir


def test_webserver_runs_tier1_and_shows_check_results(dagster_dev):
    port, model_dir = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution("__ASSET_JOB", asset_selection=TIER1)

    def finished():
        try:
            status = client.get_run_status(run_id)
        except DagsterGraphQLClientError:
            return None
        return status if status.value in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert wait_until(finished, 300, "run did not finish").value == "SUCCESS"
    response = requests.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": CHECKS_QUERY, "variables": {"key": {"path": ["dedicated_tokens"]}}},
        timeout=30,
    ).json()
    checks = response["data"]["assetNodeOrError"]["assetChecksOrError"]["checks"]
    statuses = {
        c["name"]: (c["executionForLatestMaterialization"] or {}).get("status") for c in checks
    }
    assert statuses["no_test_leak_in_tier1"] == "SUCCEEDED"
    assert (model_dir / "medtok.duckdb").exists()
    external = non_loopback_address()
    if external:
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((external, port)) != 0, "webserver must listen on 127.0.0.1 only"


CHANGED, UNCHANGED = "kolaw_kobill", "gimp_help"
SAMPLE = dg.AssetKey("general_corpus_sample")
CORPORA = dg.AssetKey("korean_corpora")


def sample_records(instance: dg.DagsterInstance, corpus: str) -> list:
    """Materializations of one `general_corpus_sample` partition, newest first."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SAMPLE, asset_partitions=[corpus]), limit=50
    ).records
    return sorted(records, key=lambda r: r.timestamp, reverse=True)


def corpus_versions(instance: dg.DagsterInstance, corpus: str) -> list[str]:
    """Data versions the daemon observed for one `korean_corpora` partition, newest first."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=CORPORA, asset_partitions=[corpus]), limit=50
    ).records
    return [
        r.event_log_entry.asset_observation.data_version
        for r in sorted(records, key=lambda r: r.timestamp, reverse=True)
    ]


def append_rows(shard: Path, n: int) -> None:
    """Rewrite an arrow stream shard with ``n`` extra rows (a real edit: size and mtime change)."""
    with pa.ipc.open_stream(pa.BufferReader(shard.read_bytes())) as reader:
        table = reader.read_all()
    extra = table.slice(0, n).set_column(
        0, table.schema.field(0).name, pa.array([f"추가된 문장 {i}번 입니다." for i in range(n)])
    )
    with pa.ipc.new_stream(shard, table.schema) as writer:
        writer.write_table(pa.concat_tables([table, extra]))


def screenshot_asset_graph(port: int, target: Path) -> None:
    """Headless Chromium: the global asset lineage with every group expanded, zoomed to fit."""
    from playwright.sync_api import sync_playwright

    requests.post(
        f"http://127.0.0.1:{port}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30
    ).raise_for_status()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 2200, "height": 1500})
        page.goto(f"http://127.0.0.1:{port}/asset-groups", wait_until="networkidle")
        page.get_by_text("Hide navigation").click()
        page.get_by_text("tokenizers", exact=True).last.wait_for()
        page.keyboard.press("Alt+e")
        page.get_by_text("tokenizer_variants", exact=True).wait_for()
        page.mouse.move(1100, 750)
        page.keyboard.down("Control")
        page.mouse.wheel(0, 260)
        page.keyboard.up("Control")
        page.wait_for_timeout(3000)
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), clip={"x": 370, "y": 100, "width": 1830, "height": 1400})
        browser.close()


@pytest.fixture(scope="module")
def automated_dev(tmp_path_factory, gemma_dir):
    """`dagster dev` with a one-minute observation cron on a data dir with two corpora, and no model cron."""
    tmp_path = tmp_path_factory.mktemp("automation")
    data_dir = copy_sample_data(tmp_path / "data")
    for corpus in (data_dir / "01_raw" / "00_korean").iterdir():
        if corpus.name not in (CHANGED, UNCHANGED):
            shutil.rmtree(corpus)
    settings = {
        "MEDTOK_OBSERVE_CRON": "* * * * *",
        "MEDTOK_MODEL_CRON": "0 0 1 1 *",
        "MEDTOK_AUTOMATION_INTERVAL_S": "5",
        "MEDTOK_BASE_MODEL": str(gemma_dir),
    }
    with running_dagster_dev(
        tmp_path, data_dir, empty_model_dir(tmp_path / "model"), **settings
    ) as (port, home):
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield port, instance, data_dir


def test_daemon_resamples_exactly_the_changed_corpus(automated_dev):
    """Observed on the cron, a changed shard gets a new data version and only its partition re-samples."""
    _, instance, data_dir = automated_dev
    first = wait_until(
        lambda: (
            all(sample_records(instance, c) for c in (CHANGED, UNCHANGED))
            and sample_records(instance, CHANGED)[0]
        ),
        900,
        "the daemon never sampled the corpora",
    )
    lines_before = first.asset_materialization.metadata["lines_seen"].value
    versions_before = corpus_versions(instance, CHANGED)
    untouched_before = len(sample_records(instance, UNCHANGED))

    changed_at = time.time()
    append_rows(data_dir / "01_raw" / "00_korean" / CHANGED / "data-00000-of-00001.arrow", 25)

    resampled = wait_until(
        lambda: next(
            (r for r in sample_records(instance, CHANGED) if r.timestamp > changed_at), None
        ),
        600,
        "the changed corpus was not re-sampled",
    )
    assert corpus_versions(instance, CHANGED)[0] not in versions_before
    assert resampled.asset_materialization.metadata["lines_seen"].value == lines_before + 25
    assert len(sample_records(instance, UNCHANGED)) == untouched_before
    assert corpus_versions(instance, UNCHANGED)[0] == corpus_versions(instance, UNCHANGED)[-1]


@pytest.mark.skipif(
    not CHROMIUM, reason="Debian chromium is not installed (make test installs it as root)"
)
def test_asset_graph_screenshot(automated_dev):
    """The UI renders the whole lineage; the picture is kept as a test artifact and shown in the README."""
    port, _, _ = automated_dev
    target = REPO / "test-artifacts" / "asset_graph.png"
    screenshot_asset_graph(port, target)
    assert target.stat().st_size > 50_000
