"""Tokenizer variants (one partition each) and their efficiency on held-out text."""

import time

import dagster as dg
import pandas as pd
from pydantic import field_validator

from medtok_dagster import layout
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import metrics, tokenizer_build
from medtok_dagster.core.dedicated import is_special_char
from medtok_dagster.core.io import atomic_dir, atomic_write_json, read_jsonl
from medtok_dagster.core.variants import (
    DEFAULT_BUDGETS,
    VARIANT_TIERS,
    VARIANTS,
    uses_general_corpus,
)
from medtok_dagster.metadata import md_counts, md_plot, md_table
from medtok_dagster.partitions import variant_partitions
from medtok_dagster.readers import (
    CONTROL_TEXTS,
    control_texts,
    general_heldout_lines,
    general_training_lines,
    medical_lines,
    read_test_split,
)
from medtok_dagster.resources import BaseModelResource, PathsResource, relative_path

GROUP = "tokenizers"
CODE_VERSION = "1"
DEFAULT_STRATEGY = "added_tokens"


class VariantConfig(dg.Config):
    """How a variant's tokens are chosen and written."""

    strategy: str = DEFAULT_STRATEGY
    """`added_tokens` (tokenizer.add_tokens, any HF tokenizer) or `bpe_merge` (new BPE entries and merges)."""
    budgets: dict[str, int] = {}
    """Budget overrides by variant (Tier 1 included); a variant not named keeps its default (4,700 / 10,700 / 20,600)."""

    @field_validator("budgets")
    @classmethod
    def _known_variants(cls, budgets: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(budgets) - set(VARIANTS))
        if unknown:
            raise ValueError(
                f"budgets for unknown variants {unknown}; variants are {list(VARIANTS)}"
            )
        return budgets

    def budget(self, variant: str) -> int:
        """The variant's budget: its override, else its default."""
        return {**DEFAULT_BUDGETS, **self.budgets}[variant]

    medical_share: float = 0.5
    """Weight of the medical corpus among training units when a general corpus is mixed in."""


@dg.asset(
    partitions_def=variant_partitions,
    group_name=GROUP,
    kinds={"tokenizers", "duckdb"},
    code_version=CODE_VERSION,
    metadata={"partition_expr": "variant"},
    deps=[
        "medical_corpus",
        dg.AssetDep("general_corpus_sample", partition_mapping=dg.AllPartitionMapping()),
    ],
    description="Extended tokenizer per variant (save_pretrained dir + token_mapping.json + stats) and its new-token table.",
)
def tokenizer_variants(
    context: dg.AssetExecutionContext,
    config: VariantConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
    dedicated_tokens: pd.DataFrame,
    candidate_tokens: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    variant = context.partition_key
    base = base_model.load_tokenizer()
    general = general_training_lines(paths) if uses_general_corpus(variant) else None
    units = tokenizer_build.training_units(medical_lines(paths), general, config.medical_share)
    tier1, tier1_sources, forced, notation = tokenizer_build.split_tier1(dedicated_tokens)
    pool = candidate_tokens[candidate_tokens["tier"].isin(VARIANT_TIERS[variant])]
    candidates = notation + [
        tokenizer_build.Candidate(t, tier) for t, tier in zip(pool["token"], pool["tier"])
    ]
    started = time.monotonic()
    plan = tokenizer_build.plan_variant(
        base,
        config.strategy,
        tier1,
        forced,
        candidates,
        units,
        config.budget(variant),
        progress=lambda used, budget: context.log.info(
            "%s: %d / %d entries selected", variant, used, budget
        ),
    )
    seconds = time.monotonic() - started
    with atomic_dir(layout.variant_dir(paths, variant)) as staging:
        tokenizer = tokenizer_build.build_extended_tokenizer(
            base, config.strategy, plan.tier1, plan.selection, plan.merges, staging
        )
        mapping = tokenizer_build.token_mapping(len(base), tokenizer, config.strategy)
        frame = tokenizer_build.token_table(plan, tokenizer, tier1_sources)
        stats = {
            "variant": variant,
            "strategy": config.strategy,
            "budget": config.budget(variant),
            "original_vocab_size": len(base),
            "new_vocab_size": len(tokenizer),
            "tokens_added": mapping["tokens_added"],
            "tier1_in_base_skipped": plan.tier1_in_base,
            "candidate_forms_in_base_skipped": plan.selection.skipped_in_base,
            "training_units": len(units),
            "training_base_tokens": plan.selection.base_tokens,
            "estimated_training_ratio": float(plan.selection.curve()["estimated_ratio"].iloc[-1])
            if plan.selection.choices
            else 1.0,
            "by_source": frame["source"].value_counts().to_dict(),
            "by_kind": frame["kind"].value_counts().to_dict(),
            "selection_seconds": round(seconds, 1),
        }
        atomic_write_json(staging / layout.TOKEN_MAPPING, mapping)
        atomic_write_json(staging / layout.variant_stats(paths, variant).name, stats)
    frame.insert(0, "variant", variant)
    curve = plan.selection.curve()
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "path": dg.MetadataValue.path(str(layout.variant_dir(paths, variant))),
            "strategy": config.strategy,
            "tokens_added": mapping["tokens_added"],
            "new_vocab_size": len(tokenizer),
            "first_new_id": int(frame["id"].min()) if len(frame) else len(base),
            "estimated_training_ratio": round(stats["estimated_training_ratio"], 3),
            "by_source": md_counts(stats["by_source"], key="source"),
            "by_kind": md_counts(stats["by_kind"], key="kind"),
            "top_savers": md_table(frame.sort_values("saved_tokens", ascending=False)),
            "budget_curve": md_plot(
                lambda ax: (
                    ax.plot(curve["entries"], curve["estimated_ratio"]),
                    ax.set_xlabel("new entries"),
                    ax.set_ylabel("est. compression on training units"),
                )
            ),
        },
    )


class EfficiencyConfig(dg.Config):
    """Held-out evaluation texts and the budgets at which compression curves are measured."""

    heldout_jsonl: list[str] = []
    """Extra held-out JSONL files (relative to the data dir, field `text`), each its own text type."""
    curve_budgets: list[int] = [250, 500, 1000, 2000, 4000, 7000, 10700, 20600]

    @field_validator("heldout_jsonl")
    @classmethod
    def _inside_data_dir(cls, files: list[str]) -> list[str]:
        """Absolute and ``..`` paths are refused before the run reads anything."""
        return [relative_path(name) for name in files]


def heldout_texts(paths: PathsResource, extra: list[str]) -> dict[str, list[str]]:
    """Held-out texts by type: test.jsonl (eval only), general corpus held-out lines, English and code."""
    texts = metrics.mcq_eval_texts([r.data for r in read_test_split(paths)], is_special_char)
    texts["general_korean"] = general_heldout_lines(paths)
    for name in CONTROL_TEXTS:
        texts[name] = control_texts(paths, name)
    for relative in extra:
        rows, _ = read_jsonl(paths.data(relative), ("text",))
        texts[relative] = [r.data["text"] for r in rows]
    return texts


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    code_version=CODE_VERSION,
    deps=["mcq_test"],
    ins={"tokenizer_variants": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    description="Base vs every variant on held-out text by type: tokens/char, tokens/word, ratio, exact round trip; budget curves.",
)
def tokenizer_efficiency(
    context: dg.AssetExecutionContext,
    config: EfficiencyConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
    tokenizer_variants: pd.DataFrame,
    medical_tokens: pd.DataFrame,
    general_tokens: pd.DataFrame,
    dedicated_tokens: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    base = base_model.load_tokenizer()
    tokenizers = {"base": base}
    for variant in VARIANTS:
        if layout.variant_dir(paths, variant).exists():
            tokenizers[variant] = core_base_model.load_local_tokenizer(
                layout.variant_dir(paths, variant)
            )
    texts = heldout_texts(paths, config.heldout_jsonl)
    table = metrics.efficiency_table(tokenizers, texts)
    prototype = tokenizer_build.prototype_order(
        dedicated_tokens["token"].tolist(),
        [*medical_tokens["token"], *general_tokens["token"]],
        base,
    )
    variant_tables = {
        v: tokenizer_variants[tokenizer_variants["variant"] == v]
        for v in ("ded_medical", "ded_med_normal")
    }
    curves = metrics.budget_curves(
        base, variant_tables, prototype, texts["exam_sentences"], config.curve_budgets
    )
    context.log.info("Measured %d tokenizers on %d text types", len(tokenizers), len(texts))
    pivot = table.pivot(index="text_type", columns="tokenizer", values="ratio_vs_base")

    def draw(ax):
        for name, group in curves.groupby("curve"):
            ax.plot(group["budget"], group["ratio_vs_base"], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("added tokens (budget)")
        ax.set_ylabel("held-out exam compression vs base")
        ax.legend(fontsize=7)

    return dg.Output(
        table,
        metadata={
            "dagster/row_count": len(table),
            "ratio_vs_base": dg.MetadataValue.md(pivot.round(3).to_markdown()),
            "tokens_per_char": dg.MetadataValue.md(
                table.pivot(index="text_type", columns="tokenizer", values="tokens_per_char")
                .round(3)
                .to_markdown()
            ),
            "round_trip_failures": int(table["round_trip_failures"].sum()),
            "budget_curves": md_table(curves.round(3), rows=len(curves)),
            "budget_vs_compression": md_plot(draw),
        },
    )
