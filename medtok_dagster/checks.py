"""Asset checks. Blocking checks stop downstream stages when data would poison the vocabulary or model."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from medtok_dagster.core import dictionary
from medtok_dagster.core.text import find_leaks, is_pure_hangul, mcq_texts
from medtok_dagster.metadata import md_table
from medtok_dagster.readers import held_out_questions, medical_lines, read_train_split
from medtok_dagster.resources import MEDICAL_DICTIONARY, PathsResource

LEAK_THRESHOLD = 0.5
SHINGLE_SIZE = 8


def tier1_texts(paths: PathsResource) -> Iterator[str]:
    """Every text Tier-1 and the medical corpus are built from: train MCQs and the dictionary."""
    records, _ = read_train_split(paths, lenient=True)
    for record in records:
        for _, text in mcq_texts(record.data):
            yield text
    for entry in dictionary.load_dictionary(paths.data(MEDICAL_DICTIONARY), lenient=True).entries:
        yield entry.term
        yield entry.definition


def leak_check_result(
    held_out: dict[str, str], texts: Iterator[str], what: str
) -> dg.AssetCheckResult:
    """Fail when any held-out question shares ≥ 50 % of its 8-character shingles with ``texts``."""
    leaks, scanned = find_leaks(held_out, texts, size=SHINGLE_SIZE, threshold=LEAK_THRESHOLD)
    table = pd.DataFrame(
        [
            {
                "question": leak.question_id,
                "overlap": round(leak.overlap, 3),
                "shingle": leak.example_shingle,
            }
            for leak in leaks
        ],
        columns=["question", "overlap", "shingle"],
    )
    return dg.AssetCheckResult(
        passed=not leaks,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(leaks)} test question(s) found in {what}"
        if leaks
        else f"no test question found in {what}",
        metadata={
            "leaked_questions": len(leaks),
            "held_out_questions": len(held_out),
            "texts_scanned": scanned,
            "threshold": LEAK_THRESHOLD,
            "shingle_size": SHINGLE_SIZE,
            "leaks": md_table(table, rows=20),
        },
    )


@dg.asset_check(
    asset="dedicated_tokens",
    blocking=True,
    description="No test.jsonl question appears in the train split or the dictionary.",
)
def no_test_leak_in_tier1(paths: PathsResource) -> dg.AssetCheckResult:
    return leak_check_result(
        held_out_questions(paths), tier1_texts(paths), "train.jsonl + dictionary"
    )


@dg.asset_check(
    asset="dictionary_terms",
    blocking=True,
    description="Every kept term is pure Hangul, 2–15 syllables, and unique.",
)
def dictionary_terms_are_clean(dictionary_terms: pd.DataFrame) -> dg.AssetCheckResult:
    kept = dictionary_terms.loc[dictionary_terms["kept"], "term"]
    bad = kept[
        ~kept.map(
            lambda t: (
                is_pure_hangul(t)
                and dictionary.MIN_TERM_CHARS <= len(t) <= dictionary.MAX_TERM_CHARS
            )
        )
    ]
    duplicates = kept[kept.duplicated()]
    offenders = pd.concat([bad, duplicates]).drop_duplicates()
    return dg.AssetCheckResult(
        passed=offenders.empty,
        metadata={
            "kept": len(kept),
            "offending_terms": md_table(offenders.to_frame("term"), rows=20),
        },
    )


@dg.asset_check(
    asset="medical_corpus",
    blocking=True,
    description="No test.jsonl question appears in the medical corpus.",
)
def no_test_leak_in_medical_corpus(paths: PathsResource) -> dg.AssetCheckResult:
    return leak_check_result(
        held_out_questions(paths), iter(medical_lines(paths)), "medical_corpus"
    )


def build_checks() -> list[dg.AssetChecksDefinition]:
    """Stand-alone checks (partitioned stages carry theirs as check specs on the asset itself)."""
    return [no_test_leak_in_tier1, dictionary_terms_are_clean, no_test_leak_in_medical_corpus]
