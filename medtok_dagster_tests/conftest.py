"""Shared fixtures: the real Gemma 3 tokenizer (converted once), a tiny random Gemma 3, and data dirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "data"
BASE_CACHE = REPO / "model" / "base"


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    """Directory with the real Gemma 3 tokenizer, converted from the embedded GGUF once per machine."""
    from medtok_dagster.core.base_model import ensure_embedded

    return ensure_embedded(BASE_CACHE, with_model=False)


@pytest.fixture(scope="session")
def gemma_tokenizer(gemma_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_dir)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped sample data (tests may corrupt it freely)."""
    target = tmp_path / "data"
    shutil.copytree(SAMPLE_DATA, target, ignore=shutil.ignore_patterns("scripts", "README.md"))
    return target


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """An empty model dir whose base-model cache is shared with the repo's (no reconversion)."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "base").symlink_to(BASE_CACHE, target_is_directory=True)
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    return target
