"""New rows for the extended vocabulary: distilled rows, initialised models, and the measured strategy comparison."""

import tempfile
import time

import dagster as dg
import pandas as pd
from pydantic import field_validator

from medtok_dagster import layout
from medtok_dagster.configs import TrainConfig, phase0_plan, source_shares
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import calibration, distill, embeddings, evaluation, lm_metrics, training
from medtok_dagster.core.io import atomic_dir, atomic_write_json, read_json
from medtok_dagster.core.variants import VARIANTS
from medtok_dagster.metadata import md_counts, md_plot, md_table
from medtok_dagster.partitions import BY_VARIANT, model_partitions, variant_partitions
from medtok_dagster.readers import (
    exam_questions,
    general_heldout_lines,
    general_training_lines,
    medical_lines,
)
from medtok_dagster.resources import BaseModelResource, PathsResource

GROUP = "model"
CODE_VERSION = "3"
"""`distilled_embeddings`: output calibration after distillation."""
INIT_CODE_VERSION = "4"
"""`initialized_model` and `init_comparison`: the calibrated distilled rows."""
DISTILL = "distill"
STRATEGIES = (*embeddings.STRATEGIES, DISTILL)
DEFAULT_STRATEGY = DISTILL
"""Chosen by `init_comparison`: lowest held-out bits/char right after init (see README)."""
CPU_DISTILL_TOKENS = 300
"""Without a GPU, distil the this-many most frequent new tokens (the rest get the fallback rows)."""
CPU_CALIBRATION_POSITIONS = 40_000
GPU_CALIBRATION_POSITIONS = 200_000
"""Training positions observed for output calibration by default, without and with a GPU."""
EVERY_TOKEN_MIN_CONTEXTS = 4
"""When every token is distilled, rows taught by fewer windows keep the fallback (README)."""
ALL_CORPUS_SAMPLES = dg.AssetDep(
    "general_corpus_sample", partition_mapping=dg.AllPartitionMapping()
)


def new_tokens(
    paths: PathsResource, variant: str, table: pd.DataFrame
) -> list[embeddings.NewToken]:
    """The variant's new rows joined with their reviewed descriptions (empty until `token_descriptions` ran)."""
    reviewed_file = layout.reviewed_descriptions(paths, variant)
    reviewed = {r["token"]: r for r in read_json(reviewed_file)} if reviewed_file.exists() else {}
    return [
        embeddings.NewToken(
            row.token,
            int(row.id),
            row.source,
            reviewed.get(row.token, {}).get("description", ""),
            reviewed.get(row.token, {}).get("method", ""),
        )
        for row in table.sort_values("id").itertuples()
    ]


def tokens_of_variant(paths: PathsResource, variant: str) -> list[embeddings.NewToken]:
    """The variant's new rows read from its saved tokenizer (and reviewed descriptions when present)."""
    tokenizer = core_base_model.load_local_tokenizer(layout.variant_dir(paths, variant))
    ids = list(range(base_vocab_size(paths, variant), len(tokenizer)))
    table = pd.DataFrame(
        {"token": tokenizer.convert_ids_to_tokens(ids), "id": ids, "source": "variant"}
    )
    return new_tokens(paths, variant, table)


def base_vocab_size(paths: PathsResource, variant: str) -> int:
    return int(
        read_json(layout.variant_dir(paths, variant) / layout.TOKEN_MAPPING)["original_vocab_size"]
    )


def training_sources(paths: PathsResource) -> dict[str, list[str]]:
    """Every line the model may learn from, by source: the medical corpus and the general samples (never the test split)."""
    return {"medical": medical_lines(paths), "general": general_training_lines(paths)}


def build_initialized(
    base_model: BaseModelResource,
    paths: PathsResource,
    variant: str,
    tokens: list[embeddings.NewToken],
    strategy: str,
    quantization: str | None,
    seed: int = 0,
):
    """Base model resized to the variant tokenizer with new rows initialised by ``strategy``.

    ``distill`` starts from ``subtoken_mean`` and writes the rows `distilled_embeddings` learned;
    those rows are read and checked (intact, this tokenizer's count, this base model) before the
    model is loaded, so damaged or foreign rows fail in seconds, not after a 27B load.
    """
    source = base_model.source()
    device, dtype = training.compute_settings(source)
    tokenizer = core_base_model.load_local_tokenizer(layout.variant_dir(paths, variant))
    base_len = base_vocab_size(paths, variant)
    distilled = distilled_rows(paths, variant, source, len(tokens)) if strategy == DISTILL else None
    model = core_base_model.load_causal_lm(
        source, dtype=dtype, quantization=quantization, device_map=device if quantization else None
    )
    rows = embeddings.resize_for(model, len(tokenizer))
    heuristic = "subtoken_mean" if strategy == DISTILL else strategy
    plan = embeddings.plan_init(tokens, heuristic, core_base_model.load_tokenizer(source), base_len)
    info = embeddings.apply_init(model, plan, base_len, seed=seed)
    if distilled is not None:
        result, calibration_stats = distilled
        distill.check_width(
            layout.distilled_dir(paths, variant),
            result,
            model.get_input_embeddings().weight.shape[1],
        )
        distill.apply(model, result, base_len)
        info["methods"] = {
            "distill": len(result.distilled),
            f"not distilled: {result.fallback_rule()}": len(tokens) - len(result.distilled),
        }
        info["calibration"] = calibration_stats
    return (
        model.to(device) if not quantization else model,
        tokenizer,
        {**info, "embedding_rows": rows, "base_vocab_size": base_len},
    )


def distilled_rows(
    paths: PathsResource, variant: str, source: core_base_model.BaseModelSource, count: int
) -> tuple[distill.DistillResult, dict | None]:
    """The variant's distilled rows and their calibration figures, refused if made from another base."""
    directory = layout.distilled_dir(paths, variant)
    result = distill.load_rows(directory, count, core_base_model.identity(source))
    info = read_json(directory / layout.DISTILL_INFO)
    if not isinstance(info, dict):
        raise distill.DistilledRowsError(
            f"{directory / layout.DISTILL_INFO}: not a JSON object; {distill.REMATERIALIZE}"
        )
    return result, info.get("calibration")


class DistillAssetConfig(dg.Config):
    """How much distillation to do; unset `max_tokens` means all tokens on a GPU and the top 300 on a CPU."""

    max_tokens: int | None = None
    """Distil the N new tokens most frequent in the training corpora (0 = all; unset = all with a GPU, 300 without)."""
    contexts_per_token: int = 24
    context_before: int = 24
    context_after: int = 8
    epochs: float = 2.0
    batch_size: int = 16
    learning_rate: float = 1e-3
    output_weight: float = 0.0
    """Weight of the output-side objective on the tied row (0: measured best, see README)."""
    keep_output: float = 0.9
    """Freeze the row directions that carry this share of the teacher's hidden-state energy, so the
    tied row keeps its output calibration while its input side is learned (0 = off)."""
    isolate: bool = False
    """True: each window learns only the occurrence it was chosen for; False (measured better per CPU second,
    README): a window learns every new token in it."""
    min_contexts: int | None = None
    """Rows learned from fewer windows keep the fallback. Unset: 4 when every token is distilled (rows
    fitted to one or two windows then read worse than subtoken_mean), 1 when only the most frequent
    are (the rows their windows teach in passing help); both measured, README."""
    predict_fallback: bool = True
    """Rows not distilled get subtoken_mean + the change a ridge map predicts from their pieces (measured better, README)."""
    teacher_cache_mb: int = distill.TEACHER_CACHE_MB
    """Host memory (MB) the teacher's hidden states may take; beyond it each batch recomputes them
    (about 1.5× the time per step, same rows; docs/memory.md)."""
    calibration_positions: int | None = None
    """Training positions observed to fit one logit offset per new token, folded into its row
    (0 = off; unset = 40,000 without a GPU, 200,000 with one; more measured better, README)."""
    calibration_penalty: float = 0.3
    """L2 penalty on the offsets (summed-loss units; measured best, README)."""
    calibration_block: int = 128
    """Tokens per calibration block (``<bos>`` first, as Phase-0 trains)."""
    seed: int = 0

    def core(self) -> distill.DistillConfig:
        cpu_default = 0 if training.compute_settings()[0] == "cuda" else CPU_DISTILL_TOKENS
        settings = self.model_dump(
            exclude={"calibration_positions", "calibration_penalty", "calibration_block"}
        )
        settings["max_tokens"] = cpu_default if self.max_tokens is None else self.max_tokens
        if self.min_contexts is None:
            settings["min_contexts"] = (
                EVERY_TOKEN_MIN_CONTEXTS if settings["max_tokens"] == 0 else 1
            )
        return distill.DistillConfig(mode="tied", **settings)

    def calibration(self) -> calibration.CalibrationConfig:
        on_gpu = training.compute_settings()[0] == "cuda"
        default = GPU_CALIBRATION_POSITIONS if on_gpu else CPU_CALIBRATION_POSITIONS
        positions = default if self.calibration_positions is None else self.calibration_positions
        return calibration.CalibrationConfig(
            positions=positions, block=self.calibration_block, penalty=self.calibration_penalty
        )


def calibrated(
    model,
    tokenizer,
    result: distill.DistillResult,
    sources: dict[str, list[str]],
    base_len: int,
    settings: calibration.CalibrationConfig,
    log,
) -> calibration.Calibration | None:
    """Output calibration of the distilled rows on blocks mixed as Phase-0 mixes them (None when off).

    The rows go into ``model`` first, so the offsets correct the model the user gets; the calibrated
    rows then replace ``result``'s input rows (tied model) or output rows (untied).
    """
    if not settings.positions:
        return None
    distill.apply(model, result, base_len)
    blocks = training.mixed_blocks(
        tokenizer,
        sources,
        settings.block,
        {name: share for name, share in source_shares().items() if sources.get(name)},
    )[: settings.blocks_needed()]
    fitted = calibration.calibrate(
        model,
        blocks,
        base_len,
        len(result.input_rows),
        lm_metrics.bos_id(tokenizer),
        settings,
        log,
    )
    if embeddings.embeddings_tied(model):
        result.input_rows = fitted.rows
    else:
        result.output_rows = fitted.rows
    return fitted


@dg.asset(
    partitions_def=variant_partitions,
    group_name=GROUP,
    kinds={"pytorch", "safetensors", "duckdb"},
    code_version=CODE_VERSION,
    pool="gpu",
    ins={"tokenizer_variants": dg.AssetIn()},
    deps=["medical_corpus", ALL_CORPUS_SAMPLES],
    metadata={"partition_expr": "variant"},
    description="New rows learned by token distillation with the base model frozen, from training-corpus contexts; resumable; loss curve table.",
)
def distilled_embeddings(
    context: dg.AssetExecutionContext,
    config: DistillAssetConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
    tokenizer_variants: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    variant = context.partition_key
    settings = config.core()
    tokens = new_tokens(paths, variant, tokenizer_variants)
    model, tokenizer, _ = build_initialized(
        base_model, paths, variant, tokens, "subtoken_mean", None
    )
    base_len = base_vocab_size(paths, variant)
    sources = training_sources(paths)
    identity = core_base_model.identity(base_model.source())
    started = time.monotonic()
    result = distill.distill(
        model,
        tokenizer,
        base_model.load_tokenizer(),
        [line for lines in sources.values() for line in lines],
        [t.token_id for t in tokens],
        base_len,
        settings,
        checkpoint_dir=layout.distill_checkpoints(paths, variant),
        log=context.log.info,
        base_identity=identity,
    )
    distill_seconds = time.monotonic() - started
    fitted = calibrated(
        model, tokenizer, result, sources, base_len, config.calibration(), context.log.info
    )
    seconds = time.monotonic() - started
    held_out = [q.question for q in exam_questions(paths)] + general_heldout_lines(paths)
    share, occurrences = distill.coverage(tokenizer, base_len, set(result.distilled), held_out)
    info = {
        "variant": variant,
        "base_model": base_model.name_or_path,
        "base_identity": identity,
        "config": settings.__dict__,
        "base_vocab_size": base_len,
        "new_tokens": len(tokens),
        "distilled": len(result.distilled),
        "fallback": len(result.fallback),
        "fallback_rows": result.fallback_rule(),
        "selected": len(result.selected),
        "contexts": result.contexts,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "seconds": round(seconds, 1),
        "distill_seconds": round(distill_seconds, 1),
        "heldout_coverage": round(share, 4),
        "heldout_new_token_occurrences": occurrences,
        **result.stats,
        "calibration": fitted.stats if fitted else None,
    }
    with atomic_dir(layout.distilled_dir(paths, variant)) as staging:
        distill.save_rows(staging, result, identity)
        if fitted is not None:
            calibration.save(staging, fitted)
        atomic_write_json(staging / layout.DISTILL_INFO, info)
    history = pd.DataFrame(
        result.history or [{"step": 0, "hidden_loss": float("nan"), "output_loss": float("nan")}]
    ).assign(variant=variant)

    def draw(ax):
        ax.plot(history["step"], history["hidden_loss"], label="hidden-state loss (input side)")
        ax.set_xlabel("step")
        ax.set_ylabel("normalised squared distance")
        ax.legend()

    return dg.Output(
        history,
        metadata={
            "path": dg.MetadataValue.path(str(layout.distilled_dir(paths, variant))),
            "dagster/row_count": len(history),
            "distilled_tokens": len(result.distilled),
            "fallback_tokens": dg.MetadataValue.int(len(result.fallback)),
            "fallback": f"{len(result.fallback)} rows not distilled: {result.fallback_rule()}",
            "contexts": result.contexts,
            "heldout_coverage": dg.MetadataValue.float(round(share, 3)),
            "tokens_per_second": result.stats.get("tokens_per_second", 0.0),
            "seconds_per_distilled_token": round(seconds / max(len(result.distilled), 1), 3),
            "seconds": round(seconds, 1),
            "resumed_from_step": result.resumed_from,
            "loss_curve": md_plot(draw),
            "calibration": calibration_table(fitted.stats if fitted else None),
        },
    )


def calibration_table(stats: dict | None) -> dg.MetadataValue:
    """The calibration's held-out loss before and after, and what it observed, as a markdown table."""
    if not stats:
        return dg.MetadataValue.md("output calibration off (calibration_positions = 0)")
    return dg.MetadataValue.md(
        pd.DataFrame({"figure": list(stats), "value": list(stats.values())}).to_markdown(
            index=False
        )
    )


class InitConfig(dg.Config):
    """How new rows are initialised and trained."""

    strategy: str = DEFAULT_STRATEGY
    """zero | random | mean | subtoken_mean | description_mean | hybrid | distill (default: measured best by `init_comparison`)."""
    embedding_mode: str | None = None
    """trainable_tokens (small adapter) | modules_to_save (prototype, 1.3–4 GB) | frozen; default from the profile."""
    seed: int = 0

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, strategy: str) -> str:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown init strategy {strategy!r}; choose one of {STRATEGIES}")
        return strategy


@dg.asset(
    partitions_def=model_partitions,
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    code_version=INIT_CODE_VERSION,
    ins={"tokenizer_variants": dg.AssetIn(partition_mapping=BY_VARIANT)},
    deps=[
        dg.AssetDep("token_descriptions", partition_mapping=BY_VARIANT),
        dg.AssetDep("distilled_embeddings", partition_mapping=BY_VARIANT),
    ],
    description="Base model resized to a variant tokenizer, new rows initialised, LoRA attached; adapter + tokenizer + init_info.json.",
)
def initialized_model(
    context: dg.AssetExecutionContext,
    config: InitConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
    tokenizer_variants: pd.DataFrame,
) -> dg.MaterializeResult:
    keys = context.partition_key.keys_by_dimension
    variant, lora = keys["variant"], training.profile(keys["profile"])
    mode = training.embedding_mode(lora, config.embedding_mode)
    tokens = new_tokens(paths, variant, tokenizer_variants)
    started = time.monotonic()
    model, tokenizer, info = build_initialized(
        base_model, paths, variant, tokens, config.strategy, lora.quantization, config.seed
    )
    peft_model = training.attach_lora(model, lora, [t.token_id for t in tokens], mode)
    counts = training.parameter_counts(peft_model)
    target = layout.initialised_dir(paths, lora.name, variant)
    with atomic_dir(target) as staging:
        sizes = training.save_adapter(
            peft_model, tokenizer, staging, [t.token_id for t in tokens], mode
        )
        init_info = {
            "variant": variant,
            "profile": lora.as_dict(),
            "base_model": base_model.name_or_path,
            "strategy": config.strategy,
            "embedding_mode": mode,
            "new_tokens": len(tokens),
            "methods": info["methods"],
            "tied_embeddings": info["tied"],
            "base_vocab_size": info["base_vocab_size"],
            "embedding_rows": info["embedding_rows"],
            "calibration": info.get("calibration"),
            **counts,
            **sizes,
            "seconds": round(time.monotonic() - started, 1),
        }
        atomic_write_json(staging / training.INIT_INFO, init_info)
    context.log.info(
        "Initialised %d rows of %s for %s (%s)", len(tokens), variant, lora.name, info["methods"]
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(target)),
            "strategy": config.strategy,
            "embedding_mode": mode,
            "new_rows": len(tokens),
            "methods": md_counts(info["methods"], key="method"),
            "tied_embeddings": info["tied"],
            **(
                {"calibration": calibration_table(info["calibration"])}
                if info.get("calibration")
                else {}
            ),
            "trainable_parameters": counts["trainable_parameters"],
            "adapter_mb": round(sizes["adapter_bytes"] / 1e6, 1),
        }
    )


class InitComparisonConfig(dg.Config):
    """Which variant and profile to compare strategies on, on how many held-out questions, and how many quick steps."""

    variant: str = "ded_medical"
    profile: str = "embedded"
    strategies: list[str] = list(STRATEGIES)
    steps: int = 20
    """Phase-0 steps after init for the second column, trained as `trained_adapter` trains (0: right after init only)."""
    eval_texts: int = 112
    """Held-out exam questions scored (at least 64 so that differences are real)."""
    batch_size: int = 4
    block_tokens: int = 128

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, variant: str) -> str:
        """The variant names a tokenizer directory, so only the known names are accepted (never a path)."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        return variant

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, strategies: list[str]) -> list[str]:
        unknown = sorted(set(strategies) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown init strategies {unknown}; choose from {STRATEGIES}")
        return strategies

    @field_validator("eval_texts")
    @classmethod
    def _enough_questions(cls, eval_texts: int) -> int:
        if eval_texts < 64:
            raise ValueError(
                "compare strategies on at least 64 held-out questions; fewer cannot separate them"
            )
        return eval_texts


def strategy_rows(
    strategy: str,
    config: InitComparisonConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
    tokens: list[embeddings.NewToken],
    held_out: list[str],
    reference: lm_metrics.TextScore,
) -> list[dict]:
    """One strategy's rows: right after init and, with ``steps``, after the Phase-0 training ``trained_adapter`` runs."""
    dtype = training.inference_settings(base_model.source())[1]
    model, tokenizer, _ = build_initialized(
        base_model, paths, config.variant, tokens, strategy, None
    )
    after_init = lm_metrics.score_texts(
        training.in_precision(model, dtype, keep=bool(config.steps)), tokenizer, held_out
    )
    rows = [evaluation.comparison_row(strategy, "after_init", after_init, reference)]
    if config.steps:
        lora = training.profile(config.profile)
        new_ids = [t.token_id for t in tokens]
        peft_model = training.attach_lora(model, lora, new_ids, training.embedding_mode(lora))
        quick = TrainConfig(
            max_steps=config.steps,
            save_steps=config.steps + 1,
            per_device_batch=config.batch_size,
            grad_accum=1,
            max_seq_len=config.block_tokens,
        )
        with tempfile.TemporaryDirectory() as checkpoints:
            plan = phase0_plan(
                paths, base_model, config.profile, config.variant, quick, checkpoints
            )
            training.phase0_trainer(peft_model, tokenizer, plan, lora).train()
        trained = lm_metrics.score_texts(
            training.in_precision(peft_model.eval(), dtype, keep=False), tokenizer, held_out
        )
        rows.append(
            evaluation.comparison_row(strategy, f"after_{config.steps}_steps", trained, reference)
        )
    return rows


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "duckdb"},
    code_version=INIT_CODE_VERSION,
    deps=[
        "mcq_test",
        "medical_corpus",
        dg.AssetDep("token_descriptions", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("distilled_embeddings", partition_mapping=dg.AllPartitionMapping()),
    ],
    ins={"tokenizer_variants": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    description="Held-out bits/char (every character scored) for every init strategy, right after init and after K quick steps, vs the base model.",
)
def init_comparison(
    context: dg.AssetExecutionContext,
    config: InitComparisonConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
    tokenizer_variants: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    table = tokenizer_variants[tokenizer_variants["variant"] == config.variant]
    tokens = new_tokens(paths, config.variant, table)
    held_out = [q.question for q in exam_questions(paths)][: config.eval_texts]
    source = base_model.source()
    device, dtype = training.inference_settings(source)
    base = core_base_model.load_causal_lm(source, dtype=dtype).to(device)
    reference = lm_metrics.score_texts(base, core_base_model.load_tokenizer(source), held_out)
    del base
    rows = [
        evaluation.comparison_row("base model, base tokenizer", "reference", reference, reference)
    ]
    for strategy in config.strategies:
        rows += strategy_rows(strategy, config, paths, base_model, tokens, held_out, reference)
        context.log.info("%s: %s", strategy, rows[-1])
    frame = pd.DataFrame(rows)
    after_init = frame[frame["stage"] == "after_init"].sort_values("bits_per_char")
    best = after_init.iloc[0]["strategy"]
    pivot = frame.pivot_table(index="strategy", columns="stage", values="bits_per_char")

    def draw(ax):
        pivot.drop(index="base model, base tokenizer", errors="ignore").drop(
            columns="reference", errors="ignore"
        ).plot.bar(ax=ax)
        ax.axhline(reference.bits_per_char, color="black", linestyle="--", label="base model")
        ax.set_ylabel("held-out exam bits per character")
        ax.legend(fontsize=7)

    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "variant": config.variant,
            "questions": len(held_out),
            "base_bits_per_char": round(reference.bits_per_char, 3),
            "best_strategy": best,
            "recommended_default": best,
            "best_vs_base": f"{after_init.iloc[0]['vs_base']:+.1%}",
            "bits_per_char": dg.MetadataValue.md(pivot.round(3).to_markdown()),
            "table": md_table(frame, rows=len(frame)),
            "comparison": md_plot(draw),
        },
    )
