"""Asset checks. Blocking checks stop downstream stages when data would poison the vocabulary or model."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from medtok_dagster.core import dedicated, dictionary
from medtok_dagster.core.io import JsonlRecord, SkipReport, read_jsonl
from medtok_dagster.core.text import find_leaks, is_pure_hangul, mcq_texts
from medtok_dagster.metadata import md_table
from medtok_dagster.core.corpus import read_lines_parquet
from medtok_dagster.resources import MCQ_TEST, MCQ_TRAIN, MEDICAL_CORPUS_PARQUET, MEDICAL_DICTIONARY, PathsResource

LEAK_THRESHOLD = 0.5
SHINGLE_SIZE = 8


def held_out_questions(paths: PathsResource) -> dict[str, str]:
    """Test questions keyed ``test.jsonl:<line>`` (lenient: a bad test line must not hide a leak)."""
    records, _ = read_jsonl(paths.data(MCQ_TEST), ("question",), lenient=True)
    return {f"test.jsonl:{r.line}": r.data["question"] for r in records}


def read_train_split(paths: PathsResource, lenient: bool) -> tuple[list[JsonlRecord], SkipReport]:
    """The MCQ train split with every field the vocabulary stages need: the only split they read."""
    return read_jsonl(paths.data(MCQ_TRAIN), dedicated.MCQ_REQUIRED_FIELDS, lenient=lenient)


def tier1_texts(paths: PathsResource) -> Iterator[str]:
    """Every text Tier-1 and the medical corpus are built from: train MCQs and the dictionary."""
    records, _ = read_train_split(paths, lenient=True)
    for record in records:
        for _, text in mcq_texts(record.data):
            yield text
    for entry in dictionary.load_dictionary(paths.data(MEDICAL_DICTIONARY), lenient=True).entries:
        yield entry.term
        yield entry.definition


def leak_check_result(held_out: dict[str, str], texts: Iterator[str], what: str) -> dg.AssetCheckResult:
    """Fail when any held-out question shares ≥ 50 % of its 8-character shingles with ``texts``."""
    leaks, scanned = find_leaks(held_out, texts, size=SHINGLE_SIZE, threshold=LEAK_THRESHOLD)
    table = pd.DataFrame(
        [{"question": leak.question_id, "overlap": round(leak.overlap, 3), "shingle": leak.example_shingle} for leak in leaks],
        columns=["question", "overlap", "shingle"],
    )
    return dg.AssetCheckResult(
        passed=not leaks,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(leaks)} test question(s) found in {what}" if leaks else f"no test question found in {what}",
        metadata={
            "leaked_questions": len(leaks),
            "held_out_questions": len(held_out),
            "texts_scanned": scanned,
            "threshold": LEAK_THRESHOLD,
            "shingle_size": SHINGLE_SIZE,
            "leaks": md_table(table, rows=20),
        },
    )


@dg.asset_check(asset="dedicated_tokens", blocking=True, description="No test.jsonl question appears in the train split or the dictionary.")
def no_test_leak_in_tier1(paths: PathsResource) -> dg.AssetCheckResult:
    return leak_check_result(held_out_questions(paths), tier1_texts(paths), "train.jsonl + dictionary")


@dg.asset_check(asset="dictionary_terms", blocking=True, description="Every kept term is pure Hangul, 2–15 syllables, and unique.")
def dictionary_terms_are_clean(dictionary_terms: pd.DataFrame) -> dg.AssetCheckResult:
    kept = dictionary_terms.loc[dictionary_terms["kept"], "term"]
    bad = kept[~kept.map(lambda t: is_pure_hangul(t) and dictionary.MIN_TERM_CHARS <= len(t) <= dictionary.MAX_TERM_CHARS)]
    duplicates = kept[kept.duplicated()]
    offenders = pd.concat([bad, duplicates]).drop_duplicates()
    return dg.AssetCheckResult(
        passed=offenders.empty,
        metadata={"kept": len(kept), "offending_terms": md_table(offenders.to_frame("term"), rows=20)},
    )


@dg.asset_check(asset="medical_corpus", blocking=True, description="No test.jsonl question appears in the medical corpus.")
def no_test_leak_in_medical_corpus(paths: PathsResource) -> dg.AssetCheckResult:
    return leak_check_result(held_out_questions(paths), iter(read_lines_parquet(paths.model(MEDICAL_CORPUS_PARQUET))), "medical_corpus")


def build_checks() -> list[dg.AssetChecksDefinition]:
    """Stand-alone checks (partitioned stages carry theirs as check specs on the asset itself)."""
    return [no_test_leak_in_tier1, dictionary_terms_are_clean, no_test_leak_in_medical_corpus]
