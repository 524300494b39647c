"""Raw inputs as observed external assets: MCQ splits, dictionary, user tokens, and the general corpora.

Nothing here reads file contents. Observation versions each source from file names, sizes and
mtimes, which is what lets automation rerun downstream stages only when a corpus really changed.
General corpora are one asset, ``korean_corpora``, with one partition per corpus directory, so a
change to one corpus re-samples exactly that corpus.
"""

import dagster as dg

from medtok_dagster.automation import observe_condition
from medtok_dagster.core.io import tree_fingerprint
from medtok_dagster.partitions import CORPORA_SOURCE, corpus_partitions
from medtok_dagster.resources import (
    GENERAL_CORPORA_DIR,
    MCQ_TEST,
    MCQ_TRAIN,
    MEDICAL_DICTIONARY,
    USER_TOKENS,
    PathsResource,
)

RAW_GROUP = "raw"
FIXED_SOURCES: dict[str, tuple[str, str]] = {
    "mcq_train": (
        MCQ_TRAIN,
        "KorMedMCQA-style train split (question, A–E, answer). Feeds vocabulary building.",
    ),
    "mcq_test": (
        MCQ_TEST,
        "Held-out exam split. Read only by evaluation and the contamination check.",
    ),
    "medical_dictionary": (MEDICAL_DICTIONARY, "Korean medical dictionary: [{term, definition}]."),
    "user_tokens_file": (USER_TOKENS, "User-defined structural tokens, one per line."),
}


def _observe(path, key: str) -> dg.ObserveResult:
    fingerprint = tree_fingerprint(path)
    return dg.ObserveResult(
        asset_key=key,
        data_version=dg.DataVersion(fingerprint.version),
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "files": fingerprint.files,
            "bytes": fingerprint.bytes,
        },
    )


@dg.multi_observable_source_asset(
    specs=[
        dg.AssetSpec(
            key,
            description=desc,
            group_name=RAW_GROUP,
            kinds={"file"},
            metadata={"path": rel},
            automation_condition=observe_condition(),
        )
        for key, (rel, desc) in FIXED_SOURCES.items()
    ],
    can_subset=True,
)
def observe_raw_files(context: dg.AssetExecutionContext, paths: PathsResource):
    """Version the MCQ splits, dictionary and user tokens from name, size and mtime."""
    for key in sorted(k.to_user_string() for k in context.selected_asset_keys):
        yield _observe(paths.data(FIXED_SOURCES[key][0]), key)


def build_corpora_source(corpora: list[str]) -> dg.AssetsDefinition:
    """The partitioned raw asset of general corpora (one partition per directory under 01_raw/00_korean)."""

    @dg.multi_observable_source_asset(
        specs=[
            dg.AssetSpec(
                CORPORA_SOURCE,
                group_name=RAW_GROUP,
                kinds={"arrow"},
                automation_condition=observe_condition(),
                metadata={"path": GENERAL_CORPORA_DIR},
                description="General Korean corpora (arrow, parquet, jsonl or txt shards), one partition per directory.",
            )
        ],
        partitions_def=corpus_partitions(corpora),
    )
    def observe_korean_corpora(context: dg.AssetExecutionContext, paths: PathsResource):
        """Version one corpus directory from its shards' names, sizes and mtimes."""
        yield _observe(paths.data(GENERAL_CORPORA_DIR, context.partition_key), CORPORA_SOURCE)

    return observe_korean_corpora
