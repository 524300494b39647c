"""Corpora: the medical corpus (train split + dictionary) and a streamed sample of each general corpus."""

import dagster as dg
import pandas as pd

from medtok_dagster import layout
from medtok_dagster.checks import leak_check_result
from medtok_dagster.configs import InputConfig
from medtok_dagster.core import corpus, dictionary
from medtok_dagster.metadata import md_table, skip_metadata
from medtok_dagster.partitions import CORPORA_SOURCE, corpus_partitions
from medtok_dagster.readers import held_out_questions, read_train_split
from medtok_dagster.resources import (
    GENERAL_CORPORA_DIR,
    MEDICAL_CORPUS_PARQUET,
    MEDICAL_DICTIONARY,
    PathsResource,
)

GROUP = "corpora"
CODE_VERSION = "1"


@dg.asset(
    group_name=GROUP,
    deps=["mcq_train", "medical_dictionary"],
    kinds={"parquet", "duckdb"},
    code_version=CODE_VERSION,
    description="Korean medical text: train questions and options plus dictionary definitions; NFC, deduplicated, one sentence per row.",
)
def medical_corpus(
    context: dg.AssetExecutionContext, config: InputConfig, paths: PathsResource
) -> dg.Output[pd.DataFrame]:
    records, skips = read_train_split(paths, config.lenient)
    entries = dictionary.load_dictionary(
        paths.data(MEDICAL_DICTIONARY), lenient=config.lenient
    ).entries
    rows = corpus.build_medical_corpus(
        [r.data for r in records], [(e.term, e.definition) for e in entries]
    )
    frame = pd.DataFrame(rows, columns=["source", "text"])
    out = corpus.write_lines_parquet(
        frame["text"].tolist(),
        paths.model(MEDICAL_CORPUS_PARQUET),
        {"source": frame["source"].tolist()},
    )
    summary = (
        frame.assign(chars=frame["text"].str.len())
        .groupby("source", as_index=False)
        .agg(rows=("text", "size"), chars=("chars", "sum"))
    )
    context.log.info(
        "Medical corpus: %d lines, %d characters", len(frame), int(summary["chars"].sum())
    )
    return dg.Output(
        summary,
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "lines": len(frame),
            "chars": int(summary["chars"].sum()),
            "by_source": md_table(summary),
            "preview": md_table(frame.sample(min(len(frame), 10), random_state=0)),
            **skip_metadata(skips),
        },
    )


class GeneralSampleConfig(dg.Config):
    """How each general corpus is sampled."""

    n_lines: int = 1_000_000
    """Lines kept per corpus (uniform reservoir sample over every shard)."""
    seed: int = 0
    """Sampling seed: the same seed and files give the same sample."""
    text_column: str | None = None
    """Column holding the text; detected (text, content, document, …) when unset."""
    heldout_permille: int = 20
    """Per-mille of sampled lines kept out of vocabulary building, for evaluation only (by line hash)."""
    lenient: bool = False
    """Skip and count unreadable records and over-long lines instead of failing."""


def build_general_corpus_sample(corpora: list[str]) -> dg.AssetsDefinition:
    """`general_corpus_sample`, one static partition per corpus directory found at load time."""

    @dg.asset(
        name="general_corpus_sample",
        partitions_def=corpus_partitions(corpora),
        group_name=GROUP,
        deps=[CORPORA_SOURCE],
        kinds={"parquet", "duckdb"},
        code_version=CODE_VERSION,
        metadata={"partition_expr": "corpus"},
        check_specs=[
            dg.AssetCheckSpec(
                "no_test_leak",
                asset="general_corpus_sample",
                blocking=True,
                description="No test.jsonl question appears in the sampled lines.",
            )
        ],
        description="Deterministic reservoir sample of each general corpus, streamed shard by shard; held-out lines kept apart.",
    )
    def general_corpus_sample(
        context: dg.AssetExecutionContext, config: GeneralSampleConfig, paths: PathsResource
    ):
        name = context.partition_key
        sample = corpus.sample_corpus(
            paths.data(GENERAL_CORPORA_DIR, name),
            config.n_lines,
            seed=config.seed,
            text_column=config.text_column,
            lenient=config.lenient,
            progress=lambda shards, lines: context.log.info(
                "%s: %d shards, %d lines read", name, shards, lines
            ),
        )
        train, heldout = corpus.split_heldout_arrow(sample.lines, config.heldout_permille)
        out = corpus.write_lines_parquet(train, layout.general_sample_file(paths, name))
        corpus.write_lines_parquet(heldout, layout.general_sample_file(paths, name, heldout=True))
        summary = pd.DataFrame(
            [
                {
                    "corpus": name,
                    "shards": len(sample.shards),
                    "text_column": sample.text_column,
                    "lines_seen": sample.lines_seen,
                    "sampled": len(train),
                    "heldout": len(heldout),
                    "chars": corpus.line_chars(train),
                    "skipped": sample.skips.total,
                }
            ]
        )
        yield dg.Output(
            summary,
            metadata={
                "path": dg.MetadataValue.path(str(out)),
                "lines": len(train),
                "lines_seen": sample.lines_seen,
                "heldout": len(heldout),
                "text_column": sample.text_column,
                "shards": md_table(pd.DataFrame([vars(s) for s in sample.shards]).astype(str)),
                "preview": md_table(pd.DataFrame({"text": train.slice(0, 10).to_pylist()})),
                **skip_metadata(sample.skips),
            },
        )
        yield leak_check_result(
            held_out_questions(paths), corpus.iter_lines(train), f"general_corpus_sample[{name}]"
        )

    return general_corpus_sample
