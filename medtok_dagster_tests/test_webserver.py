"""`make ui` for real: dagster dev on 127.0.0.1, a run launched through GraphQL, check results visible."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

pytestmark = pytest.mark.slow

TIER1 = ["special_chars_report", "medical_notation", "user_added_tokens", "dictionary_terms_raw", "dictionary_terms", "dedicated_tokens"]
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


@pytest.fixture
def dagster_dev(tmp_path, data_dir, model_dir):
    """`dagster dev` (webserver + daemon) exactly as `make ui` starts it, on a free loopback port."""
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDTOK_DATA_DIR": str(data_dir), "MEDTOK_MODEL_DIR": str(model_dir)}
    dagster = Path(sys.executable).parent / "dagster"
    log = (tmp_path / "dagster_dev.log").open("w")
    process = subprocess.Popen(
        [str(dagster), "dev", "-m", "medtok_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until(lambda: server_up(port), 180, "webserver did not start")
        yield port, model_dir
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


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
    statuses = {c["name"]: (c["executionForLatestMaterialization"] or {}).get("status") for c in checks}
    assert statuses["no_test_leak_in_tier1"] == "SUCCEEDED"
    assert (model_dir / "medtok.duckdb").exists()
    external = non_loopback_address()
    if external:
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((external, port)) != 0, "webserver must listen on 127.0.0.1 only"
