"""`make demo`: observe the raw sources, materialize the whole asset graph, and print a summary.

Runs against the same Dagster instance as `make ui` (``<model dir>/dagster_home``), so every run,
materialization and check result of the demo is browsable in the UI afterwards. Partitioned stages
run one partition at a time, in lineage order; optional assets (the LLM describer) are skipped.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.definitions import OPTIONAL_ASSETS, build_definitions
from medtok_dagster.resources import BaseModelResource, PathsResource, settings_from_env

DEMO_MODEL_PARTITIONS = {"variant": "ded_medical", "profile": "embedded"}
"""Model and training stages run for one variant × profile in the demo (CPU time); the UI can run the rest."""
DEMO_ASSET_PARTITIONS = {"distilled_embeddings": ["ded_medical"]}
"""Variant-partitioned model stages the demo runs for the demo variant only."""
DEMO_RUN_CONFIG = {
    "ops": {
        "distilled_embeddings": {
            "config": {
                "max_tokens": 600,
                "contexts_per_token": 5,
                "context_before": 16,
                "context_after": 6,
                "epochs": 2.0,
                "calibration_positions": 16_000,
            }
        },
        "init_comparison": {
            "config": {"strategies": ["subtoken_mean", "distill"], "steps": 0, "eval_texts": 64}
        },
        "trained_adapter": {
            "config": {
                "max_steps": 96,
                "save_steps": 48,
                "per_device_batch": 2,
                "grad_accum": 1,
                "max_seq_len": 64,
                "heldout_texts": 8,
            }
        },
        "model_evaluation": {
            "config": {
                "exam_questions": 64,
                "general_lines": 64,
                "control_texts": 16,
                "prefill_texts": 32,
                "prefill_repeats": 1,
            }
        },
    }
}
"""CPU-sized settings for the embedded 270M model; the asset defaults are the full-size ones."""
SUMMARY_KEYS = (
    "dagster/row_count",
    "kept",
    "lines",
    "chars",
    "tokens_added",
    "ratio_vs_base",
    "new_vocab_size",
    "best_strategy",
    "best_vs_base",
    "distilled_tokens",
    "heldout_coverage",
    "exam_questions_bits_per_char_base",
    "exam_questions_bits_per_char_trained",
    "exam_bits_per_char_vs_base",
    "exam_accuracy",
    "prefill_speedup",
    "size_gb",
)


@dataclass
class Phase:
    """Consecutive assets (in lineage order) that share one partitioning."""

    keys: list[dg.AssetKey]
    partition_keys: list[str | None]


@dataclass
class DemoReport:
    """What the demo materialized and checked, for the closing summary."""

    materialized: dict[str, dict[str, object]] = field(default_factory=dict)
    checks: list[tuple[str, str, bool, str]] = field(default_factory=list)
    seconds: float = 0.0


def _partition_keys(
    partitions: dg.PartitionsDefinition | None, only: dict[str, str], asset: str = ""
) -> list[str | None]:
    if partitions is None:
        return [None]
    keys = partitions.get_partition_keys()
    if asset in DEMO_ASSET_PARTITIONS:
        return [k for k in keys if k in DEMO_ASSET_PARTITIONS[asset]]
    if isinstance(partitions, dg.MultiPartitionsDefinition):
        keys = [k for k in keys if all(k.keys_by_dimension.get(d, v) == v for d, v in only.items())]
    return list(keys)


def plan_phases(
    defs: dg.Definitions, skip: set[str], only: dict[str, str]
) -> tuple[list[Phase], list[Phase]]:
    """Observation phases for raw sources, then materialization phases grouped by partitions definition."""
    graph = defs.resolve_asset_graph()
    raw: list[Phase] = []
    phases: list[Phase] = []
    planned: set[dg.AssetKey] = set()
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if key in planned or key.to_user_string() in skip:
            continue
        if node.is_observable and not node.is_materializable:
            raw.append(Phase([key], _partition_keys(node.partitions_def, only)))
            continue
        if not node.is_materializable:
            continue
        group = sorted(graph.assets_def_for_key(key).keys, key=lambda k: k != key)
        planned.update(group)
        keys = _partition_keys(node.partitions_def, only, key.to_user_string())
        if phases and phases[-1].partition_keys == keys:
            phases[-1].keys.extend(group)
        else:
            phases.append(Phase(group, keys))
    return raw, phases


def _collect(result: dg.ExecuteInProcessResult, report: DemoReport, partition: str | None) -> None:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        name = materialization.asset_key.to_user_string() + (f"[{partition}]" if partition else "")
        report.materialized[name] = {
            k: v.value for k, v in materialization.metadata.items() if k in SUMMARY_KEYS
        }
    for evaluation in result.get_asset_check_evaluations():
        name = evaluation.asset_key.to_user_string() + (f"[{partition}]" if partition else "")
        report.checks.append(
            (name, evaluation.check_name, evaluation.passed, evaluation.severity.value)
        )


def run_demo(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_config: dict | None = None,
    only: dict[str, str] = DEMO_MODEL_PARTITIONS,
) -> DemoReport:
    """Observe raw sources, then materialize every phase; stops at the first failure."""
    report = DemoReport()
    started = time.monotonic()
    assets = [*defs.assets, *(defs.asset_checks or [])]
    observations, phases = plan_phases(defs, OPTIONAL_ASSETS, only)
    for phase in observations:
        for partition in phase.partition_keys:
            dg.materialize(
                assets,
                selection=phase.keys,
                partition_key=partition,
                instance=instance,
                resources=defs.resources,
            )
    for phase in phases:
        for partition in phase.partition_keys:
            print(
                f"materializing {', '.join(k.to_user_string() for k in phase.keys)}"
                + (f" [{partition}]" if partition else ""),
                flush=True,
            )
            selection = dg.AssetSelection.assets(*phase.keys) | dg.AssetSelection.checks_for_assets(
                *phase.keys
            )
            config = {
                "ops": {
                    k: v
                    for k, v in (run_config or {}).get("ops", {}).items()
                    if dg.AssetKey(k) in phase.keys
                }
            }
            result = dg.materialize(
                assets,
                selection=selection,
                partition_key=partition,
                instance=instance,
                resources=defs.resources,
                run_config=config,
            )
            _collect(result, report, partition)
    report.seconds = time.monotonic() - started
    return report


def format_report(report: DemoReport) -> str:
    """A plain-text summary: one line per materialization, then the check results."""
    lines = [f"\nmedtok demo: {len(report.materialized)} materializations in {report.seconds:.0f}s"]
    for name, meta in report.materialized.items():
        detail = ", ".join(f"{k.removeprefix('dagster/')}={v}" for k, v in meta.items())
        lines.append(f"  {name:<40} {detail}")
    failed = [c for c in report.checks if not c[2]]
    lines.append(f"checks: {len(report.checks) - len(failed)} passed, {len(failed)} failed")
    lines.extend(f"  {severity} {asset}: {check}" for asset, check, _, severity in failed)
    return "\n".join(lines)


def blocking_failures(report: DemoReport) -> list[tuple[str, str, bool, str]]:
    """Failed checks of ERROR severity (warnings are reported but do not fail the demo)."""
    return [c for c in report.checks if not c[2] and c[3] == "ERROR"]


def base_model_warmer(settings: dict[str, str]) -> multiprocessing.process.BaseProcess | None:
    """A process that converts the embedded base model while the first, single-threaded stages run.

    Those stages leave the second core idle, and the conversion (about 80 s on this platform's
    2-core machine) would otherwise sit on the critical path twice: tokenizer, then weights. A hub
    id or a local directory needs no conversion: no process.
    """
    if not core_base_model.is_embedded(settings["base_model"]):
        return None
    base_model = BaseModelResource(
        name_or_path=settings["base_model"],
        paths=PathsResource(data_dir=settings["data_dir"], model_dir=settings["model_dir"]),
    )
    return multiprocessing.get_context("spawn").Process(
        target=core_base_model.warm_embedded, args=(base_model.cache_root(),), daemon=True
    )


def main() -> int:
    settings = settings_from_env()
    home = Path(settings["model_dir"]).resolve() / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(home))
    os.environ.setdefault("MPLCONFIGDIR", str(home.parent / ".cache" / "matplotlib"))
    defs = build_definitions(**settings)
    warming = base_model_warmer(settings)
    if warming is not None:
        warming.start()
    with dg.DagsterInstance.get() as instance:
        report = run_demo(defs, instance, run_config=DEMO_RUN_CONFIG)
    if warming is not None:
        warming.join()
    print(format_report(report))
    return 1 if blocking_failures(report) else 0


if __name__ == "__main__":
    sys.exit(main())
