"""The readers of the platform's inputs: one function per input, shared by assets, checks and bench scripts.

The test split has one reader here, and only evaluation, efficiency and the contamination checks
call it: it never feeds vocabulary building, distillation or training.
"""

from __future__ import annotations

from medtok_dagster import layout
from medtok_dagster.core import dedicated, lm_metrics
from medtok_dagster.core.corpus import read_lines_parquet
from medtok_dagster.core.io import JsonlRecord, SkipReport, read_jsonl
from medtok_dagster.resources import (
    EVAL_DIR,
    MCQ_TEST,
    MCQ_TRAIN,
    MEDICAL_CORPUS_PARQUET,
    PathsResource,
)

CONTROL_TEXTS = ("english", "code")
"""No-regression controls under ``03_eval/``: text the Korean vocabulary must not make worse."""


def read_train_split(paths: PathsResource, lenient: bool) -> tuple[list[JsonlRecord], SkipReport]:
    """The MCQ train split with every field the vocabulary stages need: the only split they read."""
    return read_jsonl(paths.data(MCQ_TRAIN), dedicated.MCQ_REQUIRED_FIELDS, lenient=lenient)


def read_test_split(paths: PathsResource) -> list[JsonlRecord]:
    """The MCQ test split, leniently (a bad test line must not hide a leak or stop an evaluation)."""
    records, _ = read_jsonl(paths.data(MCQ_TEST), ("question",), lenient=True)
    return records


def held_out_questions(paths: PathsResource) -> dict[str, str]:
    """Test questions keyed ``test.jsonl:<line>``, for the contamination checks."""
    return {f"test.jsonl:{r.line}": r.data["question"] for r in read_test_split(paths)}


def exam_questions(paths: PathsResource) -> list[lm_metrics.Question]:
    """Test-split questions with their five options and known answer, for exam accuracy."""
    return lm_metrics.questions_from_records([r.data for r in read_test_split(paths)])


def general_heldout_lines(paths: PathsResource) -> list[str]:
    """Held-out lines of every general corpus sample (never trained on)."""
    return [
        line
        for path in layout.general_sample_files(paths, heldout=True)
        if path.exists()
        for line in read_lines_parquet(path)
    ]


def general_training_lines(paths: PathsResource) -> list[str]:
    """The training lines of every general corpus sample."""
    return [
        line for path in layout.general_sample_files(paths) for line in read_lines_parquet(path)
    ]


def medical_lines(paths: PathsResource) -> list[str]:
    """The medical corpus (train split and dictionary), one sentence per line."""
    return read_lines_parquet(paths.model(MEDICAL_CORPUS_PARQUET))


def control_texts(paths: PathsResource, name: str) -> list[str]:
    """A no-regression control (``english`` or ``code``): one JSONL record with ``text`` per line."""
    rows, _ = read_jsonl(paths.data(f"{EVAL_DIR}/{name}.jsonl"), ("text",))
    return [r.data["text"] for r in rows]
