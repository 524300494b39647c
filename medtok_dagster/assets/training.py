"""Trained adapter (Phase-0 training in its own process through Dagster Pipes) and the merged model users serve."""

import sys

import dagster as dg
import pandas as pd

from medtok_dagster import layout
from medtok_dagster.configs import TrainConfig, phase0_plan
from medtok_dagster.core import merge, training
from medtok_dagster.core.io import atomic_dir, read_json
from medtok_dagster.metadata import md_plot, md_table
from medtok_dagster.partitions import model_partitions
from medtok_dagster.resources import BaseModelResource, PathsResource

GROUP = "training"
CODE_VERSION = "4"
"""Checkpoints keyed to their inputs; damaged adapters refused before training or merging."""


def scores_metadata(scores: list[dict]) -> dict[str, dg.MetadataValue]:
    """The base reference beside initialised and trained, per text type, and the difference to the base."""
    frame = pd.DataFrame(scores).pivot(index="text_type", columns="stage", values="bits_per_char")[
        ["base", "initialised", "trained"]
    ]
    frame["trained_vs_base"] = (frame["trained"] / frame["base"] - 1).map(lambda v: f"{v:+.1%}")
    return {
        "heldout_bits_per_char": dg.MetadataValue.md(frame.round(3).to_markdown()),
        "beats_base_on_exam_text": bool(
            frame.loc["exam_questions", "trained"] <= frame.loc["exam_questions", "base"]
        ),
    }


@dg.asset(
    partitions_def=model_partitions,
    group_name=GROUP,
    kinds={"pytorch", "safetensors", "duckdb"},
    code_version=CODE_VERSION,
    pool="gpu",
    deps=[
        "initialized_model",
        "medical_corpus",
        dg.AssetDep("general_corpus_sample", partition_mapping=dg.AllPartitionMapping()),
    ],
    metadata={"partition_expr": {"variant": "variant", "profile": "profile"}},
    description="Phase-0 LoRA + new-row training on <bos>-packed Korean text (Pipes subprocess); resumable; held-out bits/char beside the base; loss curve.",
)
def trained_adapter(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    paths: PathsResource,
    base_model: BaseModelResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.Output[pd.DataFrame]:
    keys = context.partition_key.keys_by_dimension
    variant, profile = keys["variant"], keys["profile"]
    output_dir = layout.trained_dir(paths, profile, variant)
    plan = phase0_plan(paths, base_model, profile, variant, config)
    training.check_saved_adapter(
        layout.initialised_dir(paths, profile, variant), base_model.source()
    )
    result = pipes_subprocess_client.run(
        command=[sys.executable, "-m", "medtok_dagster.pipes.train_adapter"],
        context=context,
        extras={"plan": plan.__dict__},
    ).get_materialize_result()
    curve = pd.DataFrame(read_json(output_dir / training.LOSS_CURVE))
    curve.insert(0, "profile", profile)
    curve.insert(0, "variant", variant)

    def draw(ax):
        ax.plot(curve["step"], curve["loss"], label="train loss (nats/token)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()

    return dg.Output(
        curve,
        metadata={
            **result.metadata,
            **scores_metadata(read_json(output_dir / training.HELDOUT_SCORES)),
            "path": dg.MetadataValue.path(str(output_dir)),
            "dagster/row_count": len(curve),
            "loss_curve": md_plot(draw),
            "loss_table": md_table(curve.round(4), rows=len(curve)),
        },
    )


@dg.asset(
    partitions_def=model_partitions,
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    code_version=CODE_VERSION,
    deps=["trained_adapter"],
    description="The trained adapter merged into the resized base: one plain save_pretrained directory (safetensors, tokenizer) that serves with vLLM/TGI.",
)
def merged_model(
    context: dg.AssetExecutionContext, paths: PathsResource, base_model: BaseModelResource
) -> dg.MaterializeResult:
    keys = context.partition_key.keys_by_dimension
    variant, profile = keys["variant"], keys["profile"]
    adapter_dir = layout.trained_dir(paths, profile, variant)
    target = layout.merged_dir(paths, profile, variant)
    source = base_model.source()
    training.check_saved_adapter(adapter_dir, source)
    with atomic_dir(target) as staging:
        info = merge.merge_adapter(source, adapter_dir, staging, final_dir=target)
    context.log.info(
        "Merged %s into %s (%s parameters)", adapter_dir, target, f"{info['parameters']:,}"
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(target)),
            "architecture": info["architecture"],
            "dtype": info["dtype"],
            "parameters": info["parameters"],
            "vocab_rows": info["vocab_rows"],
            "size_gb": round(info["bytes"] / 1e9, 3),
            "load_with": dg.MetadataValue.md(
                f"`AutoModelForCausalLM.from_pretrained('{target}')` and `AutoTokenizer.from_pretrained('{target}')`"
            ),
            "base_model": source.name_or_path,
        }
    )
