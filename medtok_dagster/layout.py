"""Where every artifact lives: one owner for output paths and file names.

Assets, the Pipes training process, checks and bench scripts ask this module for paths instead of
spelling them, so a layout change is one edit. Every path is joined through :class:`PathsResource`,
which refuses escapes from the data and model directories.
"""

from __future__ import annotations

from pathlib import Path

from medtok_dagster.resources import (
    GENERAL_SAMPLE_DIR,
    MEDICAL_CORPUS_PARQUET,
    TOKENIZER_DATA_DIR,
    TOKENIZER_DIR,
    PathsResource,
)

TOKEN_MAPPING = "token_mapping.json"
REVIEWED_DESCRIPTIONS = "reviewed_new_token_description.json"
SAMPLE_SUFFIX = ".parquet"
HELDOUT_SUFFIX = ".heldout.parquet"
INITIALISED_DIR = "raw_lora_added"
TRAINED_DIR = "trained"
MERGED_DIR = "merged"
CHECKPOINTS_DIR = "checkpoints"
DISTILLED_DIR = "distilled"
DISTILL_INFO = "distill_info.json"


def variant_name(variant: str) -> str:
    """The prototype's directory name for a variant (``medgemma_<variant>``)."""
    return f"medgemma_{variant}"


def variant_dir(paths: PathsResource, variant: str) -> Path:
    """A variant tokenizer's ``save_pretrained`` directory (with ``token_mapping.json`` and stats)."""
    return paths.model(TOKENIZER_DIR, variant_name(variant))


def variant_stats(paths: PathsResource, variant: str) -> Path:
    return variant_dir(paths, variant) / f"{variant}_stats.json"


def reviewed_descriptions(paths: PathsResource, variant: str) -> Path:
    """Reviewed descriptions are written back into the data directory, as the prototype did."""
    return paths.data(TOKENIZER_DATA_DIR, variant_name(variant), REVIEWED_DESCRIPTIONS)


def general_sample_files(paths: PathsResource, heldout: bool = False) -> list[Path]:
    """Every configured corpus's sample file (training lines), or its held-out file."""
    suffix = HELDOUT_SUFFIX if heldout else SAMPLE_SUFFIX
    return [
        paths.model(GENERAL_SAMPLE_DIR, f"{name}{suffix}") for name in paths.general_corpus_dirs()
    ]


def general_sample_file(paths: PathsResource, corpus: str, heldout: bool = False) -> Path:
    return paths.model(
        GENERAL_SAMPLE_DIR, f"{corpus}{HELDOUT_SUFFIX if heldout else SAMPLE_SUFFIX}"
    )


def training_sources(paths: PathsResource) -> dict[str, list[str]]:
    """Phase-0 training corpora by source: the medical corpus and every general corpus sample (never held-out lines)."""
    return {
        "medical": [str(paths.model(MEDICAL_CORPUS_PARQUET))],
        "general": [str(path) for path in general_sample_files(paths)],
    }


def initialised_dir(paths: PathsResource, profile: str, variant: str) -> Path:
    """The initialised adapter (``initialized_model``), the prototype's ``raw_lora_added`` layout."""
    return paths.model(INITIALISED_DIR, profile, variant)


def trained_dir(paths: PathsResource, profile: str, variant: str) -> Path:
    return paths.model(TRAINED_DIR, profile, variant)


def training_checkpoints(paths: PathsResource, profile: str, variant: str) -> Path:
    return paths.model(CHECKPOINTS_DIR, profile, variant)


def merged_dir(paths: PathsResource, profile: str, variant: str) -> Path:
    """The served artifact: base + trained adapter merged into one plain ``save_pretrained`` directory."""
    return paths.model(MERGED_DIR, profile, variant)


def distilled_dir(paths: PathsResource, variant: str) -> Path:
    """Distilled new rows of a variant (the base model is the deployment's, so no profile)."""
    return paths.model(DISTILLED_DIR, variant)


def distill_checkpoints(paths: PathsResource, variant: str) -> Path:
    return paths.model(CHECKPOINTS_DIR, DISTILLED_DIR, variant)
