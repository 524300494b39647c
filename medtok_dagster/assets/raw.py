"""Raw inputs as observed external assets: MCQ splits, dictionary, user tokens, each general corpus.

Nothing here reads file contents. Observation versions each source from file names, sizes and
mtimes, which is what lets automation rerun downstream stages only when a corpus really changed.
"""

from collections.abc import Iterable

import dagster as dg

from medtok_dagster.core.io import tree_fingerprint
from medtok_dagster.resources import MCQ_TEST, MCQ_TRAIN, MEDICAL_DICTIONARY, USER_TOKENS, GENERAL_CORPORA_DIR, PathsResource

RAW_GROUP = "raw"
FIXED_SOURCES: dict[str, tuple[str, str]] = {
    "mcq_train": (MCQ_TRAIN, "KorMedMCQA-style train split (question, A–E, answer). Feeds vocabulary building."),
    "mcq_test": (MCQ_TEST, "Held-out exam split. Read only by evaluation and the contamination check."),
    "medical_dictionary": (MEDICAL_DICTIONARY, "Korean medical dictionary: [{term, definition}]."),
    "user_tokens_file": (USER_TOKENS, "User-defined structural tokens, one per line."),
}
CORPUS_PREFIX = "korean_"


def corpus_asset_key(corpus: str) -> dg.AssetKey:
    """Key of the raw asset for one general corpus directory."""
    return dg.AssetKey(f"{CORPUS_PREFIX}{corpus}")


def _relative_path(key: str) -> str:
    if key in FIXED_SOURCES:
        return FIXED_SOURCES[key][0]
    return f"{GENERAL_CORPORA_DIR}/{key[len(CORPUS_PREFIX):]}"


def raw_specs(corpora: Iterable[str]) -> list[dg.AssetSpec]:
    """One spec per raw input; corpus specs are discovered from the data directory at load time."""
    specs = [
        dg.AssetSpec(key, description=desc, group_name=RAW_GROUP, kinds={"file"}, metadata={"path": rel})
        for key, (rel, desc) in FIXED_SOURCES.items()
    ]
    specs += [
        dg.AssetSpec(
            corpus_asset_key(name),
            description=f"General Korean corpus `{name}` (arrow, parquet, jsonl or txt shards).",
            group_name=RAW_GROUP,
            kinds={"arrow"},
            metadata={"path": f"{GENERAL_CORPORA_DIR}/{name}"},
        )
        for name in corpora
    ]
    return specs


def build_raw_sources(corpora: list[str]) -> dg.AssetsDefinition:
    """The observable multi-asset that versions every raw input from its file fingerprint."""

    @dg.multi_observable_source_asset(specs=raw_specs(corpora), name="observe_raw_sources", can_subset=True)
    def observe_raw_sources(context: dg.AssetExecutionContext, paths: PathsResource):
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            relative = _relative_path(key.to_user_string())
            fingerprint = tree_fingerprint(paths.data(relative))
            yield dg.ObserveResult(
                asset_key=key,
                data_version=dg.DataVersion(fingerprint.version),
                metadata={
                    "path": dg.MetadataValue.path(str(paths.data(relative))),
                    "files": dg.MetadataValue.int(fingerprint.files),
                    "bytes": dg.MetadataValue.int(fingerprint.bytes),
                },
            )

    return observe_raw_sources
