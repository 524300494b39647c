"""Tier 1 assets: special characters, user tokens, refined dictionary terms, and their union."""

import dagster as dg
import pandas as pd

from medtok_dagster.configs import InputConfig
from medtok_dagster.core import dedicated, dictionary
from medtok_dagster.core.io import atomic_write_json, atomic_write_text
from medtok_dagster.metadata import md_counts, md_plot, md_table, skip_metadata
from medtok_dagster.readers import read_train_split
from medtok_dagster.resources import (
    MCQ_TRAIN,
    MEDICAL_DICTIONARY,
    TOKENIZER_DATA_DIR,
    USER_TOKENS,
    PathsResource,
)

GROUP = "dedicated"
CODE_VERSION = "1"


class DedicatedConfig(dg.Config):
    """Which special characters are frequent enough for a dedicated token."""

    min_count: int = 3
    """A special character needs at least this many occurrences in the train split."""


@dg.asset(
    group_name=GROUP,
    deps=["mcq_train"],
    kinds={"json", "duckdb"},
    code_version=CODE_VERSION,
    description="Non-ASCII, non-Hangul symbols of the train split with counts and first context. Train split only.",
)
def special_chars_report(
    context: dg.AssetExecutionContext, config: InputConfig, paths: PathsResource
) -> dg.Output[pd.DataFrame]:
    records, skips = read_train_split(paths, config.lenient)
    report = dedicated.scan_special_chars(records, paths.data(MCQ_TRAIN).name)
    report_path = atomic_write_json(
        paths.data(TOKENIZER_DATA_DIR, "special_chars_report.json"), report
    )
    frame = dedicated.special_chars_frame(report)
    context.log.info(
        "Found %d special characters (%d occurrences) in %d records",
        report["total_unique"],
        report["total_occurrences"],
        len(records),
    )
    return dg.Output(
        frame,
        metadata={
            "report_path": dg.MetadataValue.path(str(report_path)),
            "records_scanned": len(records),
            "total_unique": report["total_unique"],
            "total_occurrences": report["total_occurrences"],
            "dagster/row_count": len(frame),
            "preview": md_table(frame[["char", "unicode", "name", "count", "example_context"]]),
            **skip_metadata(skips),
        },
    )


@dg.asset(
    group_name=GROUP,
    deps=["mcq_train"],
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="Unit notation of the train split (mg/dL, mEq/L, ×10³/μL, 회/분) with counts. Train split only.",
)
def medical_notation(config: InputConfig, paths: PathsResource) -> dg.Output[pd.DataFrame]:
    records, skips = read_train_split(paths, config.lenient)
    counts = dedicated.scan_notation(records)
    frame = pd.DataFrame(counts.most_common(), columns=["notation", "count"])
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "preview": md_table(frame),
            **skip_metadata(skips),
        },
    )


@dg.asset(
    group_name=GROUP,
    deps=["user_tokens_file"],
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="User-defined structural tokens (question:, reasoning:, - 평가기준:, …), without newlines.",
)
def user_added_tokens(config: InputConfig, paths: PathsResource) -> dg.Output[pd.DataFrame]:
    tokens, skips = dedicated.load_user_tokens(paths.data(USER_TOKENS), lenient=config.lenient)
    frame = pd.DataFrame({"token": tokens, "position": range(len(tokens))})
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "tokens": md_table(frame, rows=len(frame)),
            **skip_metadata(skips),
        },
    )


@dg.asset(
    group_name=GROUP,
    deps=["medical_dictionary"],
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="Raw terms extracted from the medical dictionary (multi-term fields split). Backed up as dictionary_terms.txt.backup.",
)
def dictionary_terms_raw(
    context: dg.AssetExecutionContext, config: InputConfig, paths: PathsResource
) -> dg.Output[pd.DataFrame]:
    loaded = dictionary.load_dictionary(paths.data(MEDICAL_DICTIONARY), lenient=config.lenient)
    terms = dictionary.extract_raw_terms(loaded.entries)
    backup = atomic_write_text(
        paths.data(TOKENIZER_DATA_DIR, "dictionary_terms.txt.backup"), "\n".join(terms) + "\n"
    )
    context.log.info("Extracted %d raw terms from %d entries", len(terms), len(loaded.entries))
    frame = pd.DataFrame({"raw_term": terms})
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "entries": len(loaded.entries),
            "duplicate_terms": loaded.duplicate_terms,
            "empty_definitions": loaded.empty_definitions,
            "hangul_only_definitions": loaded.hangul_only_definitions,
            "backup_path": dg.MetadataValue.path(str(backup)),
            **skip_metadata(loaded.skips),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="Every raw term with kept/removed and the reason; kept terms are pure Hangul, 2–15 syllables.",
)
def dictionary_terms(
    dictionary_terms_raw: pd.DataFrame, paths: PathsResource
) -> dg.Output[pd.DataFrame]:
    refined = dictionary.refine_terms(dictionary_terms_raw["raw_term"].tolist())
    kept = refined.loc[refined["kept"], "term"].tolist()
    out = atomic_write_text(
        paths.data(TOKENIZER_DATA_DIR, "dictionary_terms.txt"), "\n".join(kept) + "\n"
    )
    reasons = dictionary.reason_counts(refined)
    return dg.Output(
        refined,
        metadata={
            "dagster/row_count": len(refined),
            "kept": len(kept),
            "removed": int((~refined["kept"]).sum()),
            "by_reason": md_counts(reasons),
            "by_reason_plot": md_plot(lambda ax: ax.barh(list(reasons), list(reasons.values()))),
            "removed_examples": md_table(refined[~refined["kept"]]),
            "terms_path": dg.MetadataValue.path(str(out)),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="Tier 1: user tokens + special characters and unit notation with count ≥ min_count + refined dictionary terms.",
)
def dedicated_tokens(
    config: DedicatedConfig,
    special_chars_report: pd.DataFrame,
    medical_notation: pd.DataFrame,
    user_added_tokens: pd.DataFrame,
    dictionary_terms: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    frame = dedicated.combine_dedicated(
        zip(special_chars_report["char"], special_chars_report["count"]),
        user_added_tokens["token"].tolist(),
        dictionary_terms.loc[dictionary_terms["kept"], "term"].tolist(),
        min_count=config.min_count,
        notation=zip(medical_notation["notation"], medical_notation["count"]),
    )
    by_source = frame["source"].value_counts().to_dict()
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "by_source": md_counts(by_source, key="source"),
            "cross_source_duplicates": int((frame["also_in"] != "").sum()),
            "preview": md_table(frame),
        },
    )
