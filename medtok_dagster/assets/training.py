"""Trained adapter: Phase-0 training in its own process through Dagster Pipes, in the `gpu` pool."""

import json
import sys

import dagster as dg
import pandas as pd

from medtok_dagster.assets.model import model_partitions
from medtok_dagster.assets.tokenizers import general_sample_files
from medtok_dagster.core import training
from medtok_dagster.core.corpus import read_lines_parquet
from medtok_dagster.metadata import md_plot, md_table
from medtok_dagster.resources import MEDICAL_CORPUS_PARQUET, BaseModelResource, PathsResource

GROUP = "training"
CODE_VERSION = "1"
HELDOUT_LINES = 64


class TrainConfig(dg.Config):
    """Phase-0 run length; batch shape defaults to the profile (effective batch 32)."""

    max_steps: int = 60
    save_steps: int = 20
    seed: int = 0
    max_seq_len: int = 0
    """0 = the profile's sequence length."""
    per_device_batch: int = 0
    """0 = the profile's per-device batch."""
    grad_accum: int = 0
    """0 = the profile's gradient accumulation."""


def heldout_lines(paths: PathsResource) -> list[str]:
    """General-corpus held-out lines (never trained on), capped for a quick evaluation."""
    lines = [line for path in general_sample_files(paths, ".heldout.parquet") if path.exists() for line in read_lines_parquet(path)]
    return lines[:HELDOUT_LINES]


@dg.asset(
    partitions_def=model_partitions,
    group_name=GROUP,
    kinds={"pytorch", "safetensors", "duckdb"},
    code_version=CODE_VERSION,
    pool="gpu",
    deps=["initialized_model", "medical_corpus", dg.AssetDep("general_corpus_sample", partition_mapping=dg.AllPartitionMapping())],
    metadata={"partition_expr": {"variant": "variant", "profile": "profile"}},
    description="Phase-0 LoRA + new-row training on plain Korean text (Pipes subprocess); resumable; adapter + model card; loss curve table.",
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
    output_dir = paths.model("trained", profile, variant)
    source = base_model.source()
    plan = training.TrainPlan(
        base_model=source.load_from,
        base_model_kind=source.kind,
        init_dir=str(paths.model("raw_lora_added", profile, variant)),
        output_dir=str(output_dir),
        checkpoint_dir=str(paths.model("checkpoints", profile, variant)),
        train_files=[str(paths.model(MEDICAL_CORPUS_PARQUET)), *map(str, general_sample_files(paths))],
        heldout_texts=heldout_lines(paths),
        profile=profile,
        max_steps=config.max_steps,
        save_steps=config.save_steps,
        seed=config.seed,
        max_seq_len=config.max_seq_len or None,
        per_device_batch=config.per_device_batch or None,
        grad_accum=config.grad_accum or None,
    )
    result = pipes_subprocess_client.run(
        command=[sys.executable, "-m", "medtok_dagster.pipes.train_adapter"], context=context, extras={"plan": plan.__dict__}
    ).get_materialize_result()
    curve = pd.DataFrame(json.loads((output_dir / "loss_curve.json").read_text()))
    curve.insert(0, "profile", profile)
    curve.insert(0, "variant", variant)
    reported = {k: v for k, v in result.metadata.items()}

    def draw(ax):
        ax.plot(curve["step"], curve["loss"], label="train loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()

    return dg.Output(
        curve,
        metadata={
            **reported,
            "path": dg.MetadataValue.path(str(output_dir)),
            "dagster/row_count": len(curve),
            "loss_curve": md_plot(draw),
            "loss_table": md_table(curve.round(5), rows=len(curve)),
        },
    )
