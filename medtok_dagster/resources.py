"""Resources: where data and models live, which base model to extend, and the DuckDB IO manager.

Two environment variables, ``MEDTOK_DATA_DIR`` and ``MEDTOK_MODEL_DIR``, point the whole platform at
a user's corpora and output disk; every asset resolves files through :class:`PathsResource`, which
also refuses paths that escape those two directories.
"""

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster._core.storage.db_io_manager import DbIOManager, TableSlice
from dagster_duckdb.io_manager import DuckDbClient
from dagster_duckdb_pandas import DuckDBPandasIOManager
from pydantic import Field

from medtok_dagster.core import base_model as core_base_model

DEFAULT_DATA_DIR = "data"
DEFAULT_MODEL_DIR = "model"
DEFAULT_BASE_MODEL = "embedded:gemma3-270m"
DUCKDB_FILE = "medtok.duckdb"
DUCKDB_SCHEMA = "stats"

MCQ_DIR = "01_raw/02_kor_med_test"
MCQ_TRAIN = f"{MCQ_DIR}/train.jsonl"
MCQ_TEST = f"{MCQ_DIR}/test.jsonl"
GENERAL_CORPORA_DIR = "01_raw/00_korean"
MEDICAL_DICTIONARY = "02_refined/01_medical_dict.json"
TOKENIZER_DATA_DIR = "tokenizer"
USER_TOKENS = f"{TOKENIZER_DATA_DIR}/user_added_tokens.txt"
EVAL_DIR = "03_eval"

MEDICAL_CORPUS_PARQUET = "corpora/medical_corpus.parquet"
GENERAL_SAMPLE_DIR = "corpora/general"
VOCAB_DIR = "vocab"
TOKENIZER_DIR = "tokenizer"


class PathEscapeError(ValueError):
    """A configured path points outside the data or model directory."""


def _inside(root: Path, parts: tuple[str, ...]) -> Path:
    """Join lexically and refuse ``..``/absolute escapes; symlinks placed by the operator are honoured."""
    root = Path(os.path.abspath(root))
    candidate = Path(os.path.abspath(root.joinpath(*parts)))
    if candidate != root and root not in candidate.parents:
        raise PathEscapeError(f"{Path(*parts)} resolves to {candidate}, outside {root}")
    return candidate


def relative_path(value: str) -> str:
    """Validator for path fields of run config: relative and without ``..``, so a Launchpad user cannot
    name a file outside the directory the field is relative to; refused when the step starts, before
    the asset reads or writes anything."""
    if Path(value).is_absolute() or ".." in Path(value).parts:
        raise PathEscapeError(
            f"{value!r}: give a path relative to the data or model directory, without '..'"
        )
    return value


class PathsResource(dg.ConfigurableResource):
    """The data directory (raw inputs, reviewed lists) and the model directory (all outputs)."""

    data_dir: str = DEFAULT_DATA_DIR
    model_dir: str = DEFAULT_MODEL_DIR

    def data(self, *parts: str) -> Path:
        """A path inside the data directory; raises :class:`PathEscapeError` for ``..`` or absolute escapes."""
        return _inside(Path(self.data_dir), parts)

    def model(self, *parts: str) -> Path:
        """A path inside the model directory; raises :class:`PathEscapeError` on escapes."""
        return _inside(Path(self.model_dir), parts)

    def general_corpus_dirs(self) -> dict[str, Path]:
        """One entry per corpus directory under ``01_raw/00_korean`` (sorted, hidden ones ignored)."""
        root = self.data(GENERAL_CORPORA_DIR)
        if not root.is_dir():
            return {}
        return {
            p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
        }


class BaseModelResource(dg.ConfigurableResource):
    """The model being extended: ``embedded:gemma3-270m``, a hub id (``google/medgemma-4b-it``) or a path."""

    name_or_path: str = DEFAULT_BASE_MODEL
    paths: dg.ResourceDependency[PathsResource]

    def cache_root(self) -> Path:
        """Where the embedded model is converted to (one directory per GGUF sha256 under it)."""
        return self.paths.model("base")

    def source(self, with_model: bool = True) -> core_base_model.BaseModelSource:
        """Resolve (and for the embedded model, convert once) the configured base."""
        return core_base_model.resolve(self.name_or_path, self.cache_root(), with_model=with_model)

    def load_tokenizer(self) -> Any:
        """The base tokenizer (never the weights, so tokenizer stages stay cheap)."""
        return core_base_model.load_tokenizer(self.source(with_model=False))


LOCK_CONFLICT = "Could not set lock"
"""How DuckDB words the one-writer-per-file conflict (any other IOException is a real error)."""
LOCK_TIMEOUT_S = 600.0
LOCK_FIRST_DELAY_S = 0.05
LOCK_MAX_DELAY_S = 2.0


@dataclass
class LockWait:
    """How long one connection waited for the DuckDB file lock: reported as metadata and in the run log."""

    retries: int = 0
    seconds: float = 0.0


def is_lock_conflict(error: BaseException) -> bool:
    """True for another process holding the file lock, the only DuckDB error worth waiting out."""
    return isinstance(error, duckdb.IOException) and LOCK_CONFLICT in str(error)


def jittered_delays(
    rng: random.Random, first: float = LOCK_FIRST_DELAY_S, cap: float = LOCK_MAX_DELAY_S
) -> Iterator[float]:
    """Exponential backoff with jitter, capped: waiters that collided do not retry in lockstep, and a
    freed lock is noticed within ``cap`` seconds (dagster_duckdb's own backoff grows to 51 s and gives
    up after 10 tries, about 100 s in all, which a long table write by another run can exceed)."""
    bound = first
    while True:
        yield rng.uniform(first, bound)
        bound = min(bound * 2, cap)


def connect_waiting_for_lock(
    database: str,
    config: dict[str, Any],
    timeout_s: float = LOCK_TIMEOUT_S,
    on_conflict: Callable[[], None] | None = None,
) -> tuple[duckdb.DuckDBPyConnection, LockWait]:
    """Open a write connection, retrying while another process holds the file; give up after ``timeout_s``.

    ``on_conflict`` is called once, at the first conflict, so the wait shows in the run log as it happens.
    """
    wait = LockWait()
    started = time.monotonic()
    delays = jittered_delays(random.Random())
    while True:
        try:
            return duckdb.connect(database, read_only=False, config=config), wait
        except duckdb.IOException as error:
            elapsed = time.monotonic() - started
            if not is_lock_conflict(error) or elapsed >= timeout_s:
                raise
            if wait.retries == 0 and on_conflict is not None:
                on_conflict()
            time.sleep(min(next(delays), max(timeout_s - elapsed, 0.0)))
            wait.retries += 1
            wait.seconds = time.monotonic() - started


class LockWaitingDuckDbClient(DuckDbClient):
    """dagster_duckdb's client with :func:`connect_waiting_for_lock` instead of its fixed 10-try backoff.

    Connections stay short-lived (one per ``handle_output``/``load_input``), so runs in other
    processes take turns on the single-writer file; each output reports ``duckdb_lock_retries`` and
    ``duckdb_lock_wait_s`` so contention is visible per materialization.
    """

    @staticmethod
    @contextmanager
    def connect(
        context: dg.OutputContext | dg.InputContext, _: TableSlice
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        database = context.resource_config["database"]
        conn, wait = connect_waiting_for_lock(
            database,
            {"custom_user_agent": "dagster", **context.resource_config["connection_config"]},
            context.resource_config["lock_timeout_s"],
            on_conflict=lambda: context.log.info(
                f"DuckDB write lock on {database} is held by another process; waiting for it"
            ),
        )
        if wait.retries:
            context.log.info(
                f"Got the DuckDB write lock after {wait.retries} retries ({wait.seconds:.2f} s)"
            )
        if isinstance(context, dg.OutputContext):
            context.add_output_metadata(
                {"duckdb_lock_retries": wait.retries, "duckdb_lock_wait_s": round(wait.seconds, 3)}
            )
        try:
            yield conn
        finally:
            conn.close()


class MedtokDuckDBIOManager(DuckDBPandasIOManager):
    """The pandas DuckDB IO manager, waiting out other processes' writes instead of failing the step."""

    lock_timeout_s: float = Field(
        default=LOCK_TIMEOUT_S,
        description="Seconds to wait for another process's DuckDB write lock.",
    )

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def create_io_manager(self, context: dg.InitResourceContext) -> DbIOManager:
        return DbIOManager(
            db_client=LockWaitingDuckDbClient(),
            database=self.database,
            schema=self.schema_,
            type_handlers=self.type_handlers(),
            default_load_type=self.default_load_type(),
            io_manager_name="DuckDBIOManager",
        )


def duckdb_io_manager(model_dir: str) -> MedtokDuckDBIOManager:
    """Every stats and metrics DataFrame becomes a table in ``<model dir>/medtok.duckdb``."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    return MedtokDuckDBIOManager(database=str(Path(model_dir) / DUCKDB_FILE), schema=DUCKDB_SCHEMA)


def settings_from_env() -> dict[str, str]:
    """Data dir, model dir and base model from ``MEDTOK_*`` variables (with the documented defaults)."""
    return {
        "data_dir": os.environ.get("MEDTOK_DATA_DIR", DEFAULT_DATA_DIR),
        "model_dir": os.environ.get("MEDTOK_MODEL_DIR", DEFAULT_MODEL_DIR),
        "base_model": os.environ.get("MEDTOK_BASE_MODEL", DEFAULT_BASE_MODEL),
    }


def build_resources(
    data_dir: str, model_dir: str, base_model: str = DEFAULT_BASE_MODEL
) -> dict[str, Any]:
    """The resource dict used by ``definitions.py``, the demo and the tests alike."""
    paths = PathsResource(data_dir=data_dir, model_dir=model_dir)
    return {
        "paths": paths,
        "base_model": BaseModelResource(name_or_path=base_model, paths=paths),
        "io_manager": duckdb_io_manager(model_dir),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
