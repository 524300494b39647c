"""The shipped model against its base: bits/char by text type, exam accuracy and prefill speed, with a WARN check."""

import dagster as dg
import pandas as pd

from medtok_dagster import layout
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import evaluation, training
from medtok_dagster.core.io import read_json
from medtok_dagster.core.lm_metrics import DEFAULT_TOKEN_BUDGET
from medtok_dagster.metadata import md_plot, md_table
from medtok_dagster.partitions import model_partitions
from medtok_dagster.readers import (
    CONTROL_TEXTS,
    control_texts,
    exam_questions,
    general_heldout_lines,
)
from medtok_dagster.resources import BaseModelResource, PathsResource

GROUP = "evaluation"
CODE_VERSION = "2"
"""Damaged initialised or merged directories are refused before the base is scored."""
CHECK = "not_worse_than_base"


class EvaluationConfig(dg.Config):
    """How much held-out text each stage is scored on (0 = all of it)."""

    exam_questions: int = 0
    general_lines: int = 256
    control_texts: int = 64
    prefill_texts: int = 64
    prefill_repeats: int = 3
    token_budget: int = DEFAULT_TOKEN_BUDGET


def eval_texts(paths: PathsResource, config: EvaluationConfig) -> evaluation.EvalTexts:
    """The same texts for every stage: test-split questions, general held-out lines, English and code."""
    questions = exam_questions(paths)[: config.exam_questions or None]
    by_type = {"general_korean": general_heldout_lines(paths)[: config.general_lines or None]}
    for name in CONTROL_TEXTS:
        by_type[name] = control_texts(paths, name)[: config.control_texts or None]
    return evaluation.EvalTexts(
        by_type, questions, [q.question for q in questions][: config.prefill_texts or None]
    )


def load_stage(
    stage: str, paths: PathsResource, base_model: BaseModelResource, profile: str, variant: str
):
    """The model and tokenizer of one stage, in the machine's scoring precision (the same for every stage)."""
    source = base_model.source()
    device, dtype = training.inference_settings(source)
    if stage == "base":
        return core_base_model.load_causal_lm(source, dtype=dtype).to(
            device
        ), core_base_model.load_tokenizer(source)
    if stage == "initialized":
        adapter = layout.initialised_dir(paths, profile, variant)
        tokenizer = core_base_model.load_local_tokenizer(adapter)
        new_ids = range(read_json(adapter / training.INIT_INFO)["base_vocab_size"], len(tokenizer))
        model = training.load_adapter(
            core_base_model.load_causal_lm(source, dtype=dtype).to(device),
            adapter,
            len(tokenizer),
            new_ids,
        )
        return model.merge_and_unload(), tokenizer
    merged = layout.merged_dir(paths, profile, variant)
    local = core_base_model.BaseModelSource(str(merged), "local", str(merged))
    return core_base_model.load_causal_lm(local, dtype=dtype).to(
        device
    ), core_base_model.load_local_tokenizer(merged)


def check_stages(
    paths: PathsResource, base_model: BaseModelResource, profile: str, variant: str
) -> None:
    """The initialised adapter and the merged directory, checked before the base is scored.

    Stages are scored in order and the merged model comes last; without this a damaged merged
    directory would surface only after the base and initialised stages ran.
    """
    training.check_saved_adapter(
        layout.initialised_dir(paths, profile, variant), base_model.source()
    )
    core_base_model.check_local_model_dir(
        layout.merged_dir(paths, profile, variant), need_weights=True
    )


def summary_frames(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bits/char by text type × stage, and the exam row (accuracy, interval, prefill) per stage."""
    bits = frame.pivot(index="text_type", columns="stage", values="bits_per_char")[
        list(evaluation.STAGES)
    ]
    exam = (
        frame[frame["text_type"] == evaluation.EXAM_TEXT]
        .set_index("stage")
        .loc[list(evaluation.STAGES)]
    )
    exam = exam[
        [
            "accuracy",
            "accuracy_ci_low",
            "accuracy_ci_high",
            "accuracy_unnormalised",
            "chance",
            "prefill_chars_per_second",
            "tokens_per_char",
        ]
    ]
    return bits, exam


def draw_bits(bits: pd.DataFrame):
    def draw(ax):
        bits[["initialized", "trained"]].plot.bar(ax=ax)
        for position, base in enumerate(bits["base"]):
            ax.hlines(
                base,
                position - 0.4,
                position + 0.4,
                color="black",
                linestyle="--",
                label="base model" if position == 0 else None,
            )
        ax.set_ylabel("held-out bits per character")
        ax.tick_params(axis="x", rotation=0)
        ax.legend(fontsize=7)

    return draw


def draw_accuracy(exam: pd.DataFrame):
    def draw(ax):
        errors = [
            exam["accuracy"] - exam["accuracy_ci_low"],
            exam["accuracy_ci_high"] - exam["accuracy"],
        ]
        ax.bar(
            exam.index,
            exam["accuracy"],
            yerr=errors,
            capsize=4,
            color=["grey", "tab:blue", "tab:orange"],
        )
        ax.axhline(exam["accuracy"].loc["base"], color="black", linestyle="--", label="base model")
        ax.axhline(exam["chance"].iloc[0], color="red", linestyle=":", label="chance")
        ax.set_ylabel("exam accuracy (95% Wilson interval)")
        ax.legend(fontsize=7)

    return draw


@dg.asset(
    partitions_def=model_partitions,
    group_name=GROUP,
    kinds={"pytorch", "duckdb"},
    code_version=CODE_VERSION,
    pool="gpu",
    deps=[
        "merged_model",
        "initialized_model",
        "mcq_test",
        dg.AssetDep("general_corpus_sample", partition_mapping=dg.AllPartitionMapping()),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset="model_evaluation",
            description="The shipped model is not worse than its base on exam text (bits/char, and accuracy within the base's 95% interval).",
        )
    ],
    metadata={"partition_expr": {"variant": "variant", "profile": "profile"}},
    description="Base vs initialised vs the merged model that ships, on identical held-out characters: bits/char, exam accuracy, prefill chars/s.",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
):
    keys = context.partition_key.keys_by_dimension
    variant, profile = keys["variant"], keys["profile"]
    check_stages(paths, base_model, profile, variant)
    texts = eval_texts(paths, config)
    rows = []
    for stage in evaluation.STAGES:
        model, tokenizer = load_stage(stage, paths, base_model, profile, variant)
        rows += evaluation.evaluate_stage(
            stage, model, tokenizer, texts, config.prefill_repeats, config.token_budget
        )
        context.log.info("%s: %s", stage, [r for r in rows if r["stage"] == stage])
        del model
    frame = pd.DataFrame(rows).assign(variant=variant, profile=profile)
    bits, exam = summary_frames(frame)
    result = evaluation.verdict(rows)
    speedup = (
        exam.loc["trained", "prefill_chars_per_second"]
        / exam.loc["base", "prefill_chars_per_second"]
    )
    yield dg.Output(
        frame,
        metadata={
            "dagster/row_count": len(frame),
            "beats_base_on_exam_text": result.trained_bits <= result.base_bits,
            "exam_bits_per_char_vs_base": f"{result.trained_bits / result.base_bits - 1:+.1%}",
            "exam_accuracy": dg.MetadataValue.float(round(result.trained_accuracy, 3)),
            "prefill_speedup": dg.MetadataValue.float(round(float(speedup), 2)),
            "bits_per_char": dg.MetadataValue.md(bits.round(3).to_markdown()),
            "exam": dg.MetadataValue.md(exam.round(3).to_markdown()),
            "bits_per_char_plot": md_plot(draw_bits(bits)),
            "accuracy_plot": md_plot(draw_accuracy(exam)),
            "table": md_table(frame, rows=len(frame)),
            "questions": len(texts.questions),
        },
    )
    yield dg.AssetCheckResult(
        check_name=CHECK,
        passed=result.passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=result.describe(),
        metadata={
            "base_bits_per_char": round(result.base_bits, 3),
            "trained_bits_per_char": round(result.trained_bits, 3),
            "bits_per_char_difference": round(result.trained_bits - result.base_bits, 3),
            "base_accuracy": round(result.base_accuracy, 3),
            "trained_accuracy": round(result.trained_accuracy, 3),
            "accuracy_difference": round(result.trained_accuracy - result.base_accuracy, 3),
        },
    )
