"""Initialised models (variant × LoRA profile) and the measured comparison of initialisation strategies."""

import json
import time
from typing import Optional

import dagster as dg
import pandas as pd
from pydantic import field_validator

from medtok_dagster.assets.descriptions import REVIEWED_FILE
from medtok_dagster.assets.tokenizers import VARIANTS, variant_dir, variant_partitions
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import embeddings, metrics, training
from medtok_dagster.core.corpus import read_lines_parquet
from medtok_dagster.core.dedicated import MCQ_REQUIRED_FIELDS
from medtok_dagster.core.io import atomic_dir, atomic_write_json, read_json, read_jsonl
from medtok_dagster.metadata import md_counts, md_plot, md_table
from medtok_dagster.resources import MCQ_TEST, MEDICAL_CORPUS_PARQUET, TOKENIZER_DATA_DIR, BaseModelResource, PathsResource

GROUP = "model"
CODE_VERSION = "1"
DEFAULT_STRATEGY = "subtoken_mean"
"""Chosen by `init_comparison`: lowest held-out bits/char after init and after quick training (see README)."""
profile_partitions = dg.StaticPartitionsDefinition(list(training.PROFILES))
model_partitions = dg.MultiPartitionsDefinition({"variant": variant_partitions, "profile": profile_partitions})
BY_VARIANT = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="variant")


class InitConfig(dg.Config):
    """How new rows are initialised and trained."""

    strategy: str = DEFAULT_STRATEGY
    """zero | random | mean | subtoken_mean | description_mean | hybrid (default measured best by `init_comparison`)."""
    embedding_mode: Optional[str] = None
    """trainable_tokens (small adapter) | modules_to_save (prototype, 1.3–4 GB) | frozen; default from the profile."""
    seed: int = 0


def device_settings() -> tuple[str, object]:
    """fp32 on CPU, bf16 on a GPU."""
    import torch

    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def new_tokens(paths: PathsResource, variant: str, table: pd.DataFrame) -> list[embeddings.NewToken]:
    """The variant's new rows joined with their reviewed descriptions."""
    reviewed = {r["token"]: r for r in json.loads(paths.data(TOKENIZER_DATA_DIR, f"medgemma_{variant}", REVIEWED_FILE).read_text(encoding="utf-8"))}
    return [
        embeddings.NewToken(row.token, int(row.id), row.source, reviewed.get(row.token, {}).get("description", ""), reviewed.get(row.token, {}).get("method", ""))
        for row in table.sort_values("id").itertuples()
    ]


def build_initialized(base_model: BaseModelResource, paths: PathsResource, variant: str, tokens: list[embeddings.NewToken], strategy: str, quantization: Optional[str], seed: int = 0):
    """Base model resized to the variant tokenizer with new rows initialised by ``strategy``."""
    device, dtype = device_settings()
    tokenizer = core_base_model.load_local_tokenizer(variant_dir(paths, variant))
    base_len = read_json(variant_dir(paths, variant) / "token_mapping.json")["original_vocab_size"]
    source = base_model.source()
    model = core_base_model.load_causal_lm(source, dtype=dtype, quantization=quantization, device_map=device if quantization else None)
    rows = embeddings.resize_for(model, len(tokenizer))
    plan = embeddings.plan_init(tokens, strategy, core_base_model.load_tokenizer(source), base_len)
    info = embeddings.apply_init(model, plan, base_len, seed=seed)
    return model.to(device) if not quantization else model, tokenizer, {**info, "embedding_rows": rows, "base_vocab_size": base_len}


@dg.asset(
    partitions_def=model_partitions,
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    code_version=CODE_VERSION,
    ins={"tokenizer_variants": dg.AssetIn(partition_mapping=BY_VARIANT)},
    deps=[dg.AssetDep("token_descriptions", partition_mapping=BY_VARIANT)],
    description="Base model resized to a variant tokenizer, new rows initialised, LoRA attached; adapter + tokenizer + init_info.json.",
)
def initialized_model(
    context: dg.AssetExecutionContext, config: InitConfig, paths: PathsResource, base_model: BaseModelResource, tokenizer_variants: pd.DataFrame
) -> dg.MaterializeResult:
    keys = context.partition_key.keys_by_dimension
    variant, lora = keys["variant"], training.profile(keys["profile"])
    mode = training.embedding_mode(lora, config.embedding_mode)
    tokens = new_tokens(paths, variant, tokenizer_variants)
    started = time.monotonic()
    model, tokenizer, info = build_initialized(base_model, paths, variant, tokens, config.strategy, lora.quantization, config.seed)
    peft_model = training.attach_lora(model, lora, [t.token_id for t in tokens], mode)
    counts = training.parameter_counts(peft_model)
    target = paths.model("raw_lora_added", lora.name, variant)
    with atomic_dir(target) as staging:
        sizes = training.save_adapter(peft_model, tokenizer, staging, [t.token_id for t in tokens], mode)
        init_info = {
            "variant": variant, "profile": lora.as_dict(), "base_model": base_model.name_or_path, "strategy": config.strategy,
            "embedding_mode": mode, "new_tokens": len(tokens), "methods": info["methods"], "tied_embeddings": info["tied"],
            "base_vocab_size": info["base_vocab_size"], "embedding_rows": info["embedding_rows"], **counts, **sizes,
            "seconds": round(time.monotonic() - started, 1),
        }
        atomic_write_json(staging / "init_info.json", init_info)
    context.log.info("Initialised %d rows of %s for %s (%s)", len(tokens), variant, lora.name, info["methods"])
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(target)),
            "strategy": config.strategy,
            "embedding_mode": mode,
            "new_rows": len(tokens),
            "methods": md_counts(info["methods"], key="method"),
            "tied_embeddings": info["tied"],
            "trainable_parameters": counts["trainable_parameters"],
            "adapter_mb": round(sizes["adapter_bytes"] / 1e6, 1),
        }
    )


class InitComparisonConfig(dg.Config):
    """Which variant and profile to compare strategies on, and how many quick steps to train."""

    variant: str = "ded_medical"
    profile: str = "embedded"
    strategies: list[str] = list(embeddings.STRATEGIES)
    steps: int = 20
    eval_texts: int = 112
    batch_size: int = 4

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, variant: str) -> str:
        """The variant names a tokenizer directory, so only the known names are accepted (never a path)."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        return variant


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "duckdb"},
    code_version=CODE_VERSION,
    deps=["mcq_test", "medical_corpus", dg.AssetDep("token_descriptions", partition_mapping=dg.AllPartitionMapping())],
    ins={"tokenizer_variants": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    description="Held-out loss and bits/char for every init strategy, right after init and after K quick steps, vs the base model.",
)
def init_comparison(
    context: dg.AssetExecutionContext, config: InitComparisonConfig, paths: PathsResource, base_model: BaseModelResource, tokenizer_variants: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    lora = training.profile(config.profile)
    table = tokenizer_variants[tokenizer_variants["variant"] == config.variant]
    tokens = new_tokens(paths, config.variant, table)
    records, _ = read_jsonl(paths.data(MCQ_TEST), MCQ_REQUIRED_FIELDS, lenient=True)
    held_out = [r.data["question"] for r in records][: config.eval_texts]
    train_texts = read_lines_parquet(paths.model(MEDICAL_CORPUS_PARQUET))
    device, dtype = device_settings()
    source = base_model.source()
    base = core_base_model.load_causal_lm(source, dtype=dtype).to(device)
    reference = metrics.heldout_loss(base, core_base_model.load_tokenizer(source), held_out, batch_size=config.batch_size)
    del base
    rows = [{"strategy": "base model, base tokenizer", "stage": "reference", **vars(reference)}]
    for strategy in config.strategies:
        model, tokenizer, info = build_initialized(base_model, paths, config.variant, tokens, strategy, None)
        rows.append({"strategy": strategy, "stage": "after_init", **vars(metrics.heldout_loss(model, tokenizer, held_out, batch_size=config.batch_size))})
        peft_model = training.attach_lora(model, lora, [t.token_id for t in tokens], "trainable_tokens")
        training.quick_train(peft_model, tokenizer, train_texts, config.steps, lora.learning_rate, batch_size=config.batch_size)
        rows.append({"strategy": strategy, "stage": f"after_{config.steps}_steps", **vars(metrics.heldout_loss(peft_model, tokenizer, held_out, batch_size=config.batch_size))})
        context.log.info("%s: %s", strategy, rows[-1])
        del model, peft_model
    frame = pd.DataFrame(rows)
    trained = frame[frame["stage"].str.startswith("after_") & (frame["stage"] != "after_init")]
    best = trained.sort_values("bits_per_char").iloc[0]["strategy"]
    mean_bpc = trained.loc[trained["strategy"] == "mean", "bits_per_char"]
    pivot = frame.pivot_table(index="strategy", columns="stage", values="bits_per_char")

    def draw(ax):
        pivot.drop(index="base model, base tokenizer", errors="ignore").plot.bar(ax=ax)
        ax.axhline(reference.bits_per_char, color="black", linestyle="--", label="base model")
        ax.set_ylabel("held-out bits per character")
        ax.legend(fontsize=7)

    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "variant": config.variant,
            "best_strategy": best,
            "recommended_default": best,
            "best_vs_mean_bits_per_char": round(float(mean_bpc.iloc[0] - trained["bits_per_char"].min()), 4) if len(mean_bpc) else 0.0,
            "bits_per_char": dg.MetadataValue.md(pivot.round(4).to_markdown()),
            "table": md_table(frame.round(4), rows=len(frame)),
            "comparison": md_plot(draw),
        },
    )
