"""Candidate vocabularies: ▁-aware BPE, Hangul n-grams, the prototype's tier lists, and scored candidates."""

from collections import Counter

import dagster as dg
import pandas as pd

from medtok_dagster import layout
from medtok_dagster.core import tokenizer_build, vocab
from medtok_dagster.core.corpus import read_lines_parquet
from medtok_dagster.metadata import md_counts, md_table
from medtok_dagster.readers import general_training_lines, medical_lines
from medtok_dagster.resources import (
    MEDICAL_CORPUS_PARQUET,
    VOCAB_DIR,
    BaseModelResource,
    PathsResource,
)

GROUP = "vocab"
CODE_VERSION = "1"
GENERAL_SAMPLE_DEP = dg.AssetDep(
    "general_corpus_sample", partition_mapping=dg.AllPartitionMapping()
)


class BpeConfig(dg.Config):
    """BpeTrainer settings for the medical corpus (the prototype's 10k, min_freq 3)."""

    vocab_size: int = 10_000
    min_frequency: int = 3


class BpeGeneralConfig(BpeConfig):
    """BpeTrainer settings for the general corpora (the prototype's 20k)."""

    vocab_size: int = 20_000


def _bpe_output(
    context: dg.AssetExecutionContext,
    lines: list[str],
    config: BpeConfig,
    paths: PathsResource,
    name: str,
) -> dg.Output[pd.DataFrame]:
    tokenizer = vocab.train_bpe(
        lines, vocab_size=config.vocab_size, min_frequency=config.min_frequency
    )
    path = vocab.save_bpe(
        tokenizer, paths.model(VOCAB_DIR, f"{name}_{config.vocab_size // 1000}k.json")
    )
    frame = vocab.bpe_vocab_frame(tokenizer, lines)
    context.log.info("%s: %d pieces learned from %d lines", name, len(frame), len(lines))
    hangul = frame[frame["is_hangul"] & (frame["length"] >= 2)]
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "path": dg.MetadataValue.path(str(path)),
            "hangul_pieces": len(hangul),
            "word_initial_pieces": int(frame["word_initial"].sum()),
            "top_pieces": md_table(hangul.sort_values("frequency", ascending=False)),
        },
    )


@dg.asset(
    group_name=GROUP,
    deps=["medical_corpus"],
    kinds={"tokenizers", "duckdb"},
    code_version=CODE_VERSION,
    description="BPE (▁-aware pre-tokenisation) trained on the medical corpus; tokenizer JSON + vocabulary table.",
)
def bpe_medical(
    context: dg.AssetExecutionContext, config: BpeConfig, paths: PathsResource
) -> dg.Output[pd.DataFrame]:
    return _bpe_output(context, medical_lines(paths), config, paths, "bpe_medical")


@dg.asset(
    group_name=GROUP,
    deps=[GENERAL_SAMPLE_DEP],
    kinds={"tokenizers", "duckdb"},
    code_version=CODE_VERSION,
    description="BPE (▁-aware pre-tokenisation) trained on every general corpus sample; tokenizer JSON + vocabulary table.",
)
def bpe_general(
    context: dg.AssetExecutionContext, config: BpeGeneralConfig, paths: PathsResource
) -> dg.Output[pd.DataFrame]:
    return _bpe_output(context, general_training_lines(paths), config, paths, "bpe_general")


class NgramConfig(dg.Config):
    """Hangul n-gram range and the count below which n-grams are not stored."""

    min_n: int = 2
    max_n: int = 5
    min_count: int = 2


@dg.asset(
    group_name=GROUP,
    deps=["medical_corpus", GENERAL_SAMPLE_DEP],
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="Hangul 2–5-grams with count, document frequency and word-initial count, per domain (DuckDB-vectorised).",
)
def ngram_candidates(config: NgramConfig, paths: PathsResource) -> dg.Output[pd.DataFrame]:
    sources = {
        "medical": [paths.model(MEDICAL_CORPUS_PARQUET)],
        "general": layout.general_sample_files(paths),
    }
    frames = [
        vocab.count_hangul_ngrams(
            files, min_n=config.min_n, max_n=config.max_n, min_count=config.min_count
        ).assign(domain=domain)
        for domain, files in sources.items()
        if files
    ]
    frame = pd.concat(frames, ignore_index=True)
    by_n = frame.groupby(["domain", "n"]).size().rename("ngrams").reset_index()
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "by_domain_and_n": md_table(by_n, rows=len(by_n)),
            "top": md_table(frame),
        },
    )


class MedicalTierConfig(dg.Config):
    """The prototype's Tier-2 cap and frequency threshold."""

    max_tokens: int = 10_000
    min_freq: int = 3


class GeneralTierConfig(MedicalTierConfig):
    """The prototype's Tier-3 cap and frequency threshold."""

    max_tokens: int = 20_000
    min_freq: int = 10


def tier_metadata(frame: pd.DataFrame) -> dict[str, object]:
    """What a tier's candidate table shows in the UI: its size, where candidates came from, the top rows."""
    return {
        "dagster/row_count": len(frame),
        "by_source": md_counts(frame["source"].value_counts().to_dict(), key="source"),
        "preview": md_table(frame),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="Tier 2 candidates by the prototype's priority: dictionary terms, then BPE pieces and longer n-grams first.",
)
def medical_tokens(
    config: MedicalTierConfig,
    dictionary_terms: pd.DataFrame,
    ngram_candidates: pd.DataFrame,
    bpe_medical: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    terms = dictionary_terms.loc[dictionary_terms["kept"], "term"].tolist()
    frame = vocab.select_medical_tokens(
        terms,
        ngram_candidates[ngram_candidates["domain"] == "medical"],
        bpe_medical,
        config.max_tokens,
        config.min_freq,
    )
    return dg.Output(frame, metadata=tier_metadata(frame))


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="Tier 3 candidates from general Korean (BPE pieces and n-grams), excluding every medical token.",
)
def general_tokens(
    config: GeneralTierConfig,
    ngram_candidates: pd.DataFrame,
    bpe_general: pd.DataFrame,
    medical_tokens: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    frame = vocab.select_general_tokens(
        ngram_candidates[ngram_candidates["domain"] == "general"],
        bpe_general,
        set(medical_tokens["token"]),
        config.max_tokens,
        config.min_freq,
    )
    return dg.Output(frame, metadata=tier_metadata(frame))


@dg.asset(
    group_name=GROUP,
    deps=["medical_corpus", GENERAL_SAMPLE_DEP],
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    description="Every candidate once: tier, frequency, whether the base has it (bare / ▁ form), and estimated tokens saved.",
)
def candidate_tokens(
    context: dg.AssetExecutionContext,
    paths: PathsResource,
    base_model: BaseModelResource,
    medical_tokens: pd.DataFrame,
    general_tokens: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    tiers = pd.concat(
        [medical_tokens.assign(tier="medical"), general_tokens.assign(tier="general")],
        ignore_index=True,
    )
    tiers = tiers.drop_duplicates("token", keep="first")
    units: Counter = tokenizer_build.unit_frequencies(medical_lines(paths))
    for path in layout.general_sample_files(paths):
        units.update(tokenizer_build.unit_frequencies(read_lines_parquet(path)))
    base = tokenizer_build.BasePieces(base_model.load_tokenizer())
    savings = tokenizer_build.isolated_savings(tiers["token"].tolist(), units, base)
    frame = tiers[["token", "tier", "source", "frequency"]].merge(savings, on="token", how="left")
    frame = frame.sort_values("estimated_saved", ascending=False, ignore_index=True)
    context.log.info("%d candidates scored on %d distinct units", len(frame), len(units))
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "by_tier": md_counts(frame["tier"].value_counts().to_dict(), key="tier"),
            "bare_in_base": int(frame["in_base_bare"].sum()),
            "word_initial_in_base": int(frame["in_base_word_initial"].sum()),
            "word_initial_better": int((frame["saved_word_initial"] > frame["saved_bare"]).sum()),
            "top_savers": md_table(frame),
        },
    )
