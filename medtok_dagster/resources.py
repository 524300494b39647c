"""Resources: where data and models live, which base model to extend, and the DuckDB IO manager.

Two environment variables, ``MEDTOK_DATA_DIR`` and ``MEDTOK_MODEL_DIR``, point the whole platform at
a user's corpora and output disk; every asset resolves files through :class:`PathsResource`, which
also refuses paths that escape those two directories.
"""

import os
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_duckdb_pandas import DuckDBPandasIOManager

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
        return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


class BaseModelResource(dg.ConfigurableResource):
    """The model being extended: ``embedded:gemma3-270m``, a hub id (``google/medgemma-4b-it``) or a path."""

    name_or_path: str = DEFAULT_BASE_MODEL
    paths: dg.ResourceDependency[PathsResource]

    def source(self, with_model: bool = True) -> core_base_model.BaseModelSource:
        """Resolve (and for the embedded model, convert once) the configured base."""
        return core_base_model.resolve(self.name_or_path, self.paths.model("base"), with_model=with_model)

    def load_tokenizer(self) -> Any:
        """The base tokenizer (never the weights, so tokenizer stages stay cheap)."""
        return core_base_model.load_tokenizer(self.source(with_model=False))


def duckdb_io_manager(model_dir: str) -> DuckDBPandasIOManager:
    """Every stats and metrics DataFrame becomes a table in ``<model dir>/medtok.duckdb``."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    return DuckDBPandasIOManager(database=str(Path(model_dir) / DUCKDB_FILE), schema=DUCKDB_SCHEMA)


def settings_from_env() -> dict[str, str]:
    """Data dir, model dir and base model from ``MEDTOK_*`` variables (with the documented defaults)."""
    return {
        "data_dir": os.environ.get("MEDTOK_DATA_DIR", DEFAULT_DATA_DIR),
        "model_dir": os.environ.get("MEDTOK_MODEL_DIR", DEFAULT_MODEL_DIR),
        "base_model": os.environ.get("MEDTOK_BASE_MODEL", DEFAULT_BASE_MODEL),
    }


def build_resources(data_dir: str, model_dir: str, base_model: str = DEFAULT_BASE_MODEL) -> dict[str, Any]:
    """The resource dict used by ``definitions.py``, the demo and the tests alike."""
    paths = PathsResource(data_dir=data_dir, model_dir=model_dir)
    return {
        "paths": paths,
        "base_model": BaseModelResource(name_or_path=base_model, paths=paths),
        "io_manager": duckdb_io_manager(model_dir),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
