"""The `medgemma-4b` profile at MedGemma 4B's full size, through real Dagster materializations.

Builds a random-weight ``Gemma3ForConditionalGeneration`` with MedGemma 4B's exact shape (text:
hidden 2560, 34 layers, 8 heads, 4 KV heads, head_dim 256, intermediate 10240, sliding window
1024, 262,208 embedding rows; SigLIP so400m vision tower, 896 px, patch 14; 256 tokens per image)
in bf16, about 4.3B parameters and 8 GiB, saved as a local ``save_pretrained`` directory with the
real Gemma 3 tokenizer plus ``<image_soft_token>``. That directory is the ``base_model`` of a fresh
data and model directory: the tokenizer-only upstream stages run on the sample data, then
``distilled_embeddings``, ``initialized_model``, ``trained_adapter`` (8-bit, as the profile says),
``merged_model`` and ``model_evaluation`` run for one variant × profile partition, each in its own
process, and the merged directory is loaded with plain ``AutoModelForCausalLM`` in a fresh process.

Reports seconds, peak resident memory (the stage's process tree, sampled; and the largest single
process) and, on a GPU, peak GPU memory per stage, every artifact's size on disk and the machine.
Random weights have no quality to measure: the model figures the stages report are not quality.
``--shape tiny`` runs the same path on a few-layer model of the same family (the test).

    .venv/bin/python bench/bench_at_size.py --shape 4b --out bench/results/at_size_4b.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _at_size as at  # noqa: E402
from _machine import machine  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("4b", "tiny"), default="4b")
    p.add_argument("--work", type=Path, help="work directory (default /tmp/medtok-at-size-<shape>)")
    p.add_argument(
        "--base-dir",
        type=Path,
        help="where the random-weight model is built, reused when its shape matches "
        "(default /tmp/medtok-at-size-<shape>-base)",
    )
    p.add_argument(
        "--base-model",
        help="use this base (a local directory or embedded:gemma3-270m) instead of building one",
    )
    p.add_argument("--variant", default="ded_medical")
    p.add_argument("--profile", default="medgemma-4b")
    p.add_argument(
        "--asset-defaults",
        action="store_true",
        help="stage sizes not given as flags are the assets' own defaults (on a GPU: the GPU ones)",
    )
    p.add_argument("--budget", type=int, help="tokens added to the variant (default: the asset's)")
    sizes = p.add_argument_group("sizes (defaults: BENCH_SIZES; see --asset-defaults)")
    for flag, kind, what in SIZE_FLAGS:
        sizes.add_argument(
            f"--{flag}", type=kind, help=f"{what} (bench default {BENCH_SIZES[flag]})"
        )
    p.add_argument(
        "--from-stage",
        choices=(*at.MODEL_STAGES, "plain_load"),
        help="rerun from this stage in the existing work directory, keeping what earlier stages wrote",
    )
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument(
        "--table", type=Path, help="print a report JSON's stages and artifacts as markdown"
    )
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p


BENCH_SIZES: dict[str, Any] = {
    "tokens": 128,
    "contexts": 2,
    "context-before": 8,
    "context-after": 4,
    "epochs": 1.0,
    "distill-batch": 8,
    "calibration-positions": 512,
    "calibration-block": 32,
    "steps": 2,
    "seq-len": 64,
    "batch": 1,
    "heldout-texts": 2,
    "questions": 4,
    "general-lines": 4,
    "control-texts": 2,
    "prefill-texts": 2,
    "prefill-repeats": 1,
}
"""Sizes at which MedGemma 4B's shape runs through every stage on a 2-core CPU in well under an hour."""
SIZE_FLAGS = (
    ("tokens", int, "new tokens distilled"),
    ("contexts", int, "windows per distilled token"),
    ("context-before", int, "window tokens before an occurrence"),
    ("context-after", int, "window tokens after an occurrence"),
    ("epochs", float, "distillation epochs"),
    ("distill-batch", int, "distillation windows per step"),
    ("calibration-positions", int, "output-calibration positions"),
    ("calibration-block", int, "output-calibration block length"),
    ("steps", int, "training steps"),
    ("seq-len", int, "training block length"),
    ("batch", int, "training blocks per step (no accumulation)"),
    ("heldout-texts", int, "texts per type trained_adapter scores"),
    ("questions", int, "exam questions model_evaluation scores"),
    ("general-lines", int, "general held-out lines model_evaluation scores"),
    ("control-texts", int, "English and code texts model_evaluation scores"),
    ("prefill-texts", int, "texts model_evaluation times"),
    ("prefill-repeats", int, "timed prefill passes"),
)
OPS = {
    "distilled_embeddings": {
        "max_tokens": "tokens",
        "contexts_per_token": "contexts",
        "context_before": "context-before",
        "context_after": "context-after",
        "epochs": "epochs",
        "batch_size": "distill-batch",
        "calibration_positions": "calibration-positions",
        "calibration_block": "calibration-block",
    },
    "trained_adapter": {
        "max_steps": "steps",
        "save_steps": "steps",
        "per_device_batch": "batch",
        "grad_accum": None,
        "max_seq_len": "seq-len",
        "heldout_texts": "heldout-texts",
    },
    "model_evaluation": {
        "exam_questions": "questions",
        "general_lines": "general-lines",
        "control_texts": "control-texts",
        "prefill_texts": "prefill-texts",
        "prefill_repeats": "prefill-repeats",
    },
}
"""Each stage's config field and the flag that sizes it (``grad_accum`` is 1 whenever batch is set)."""


def size(args: argparse.Namespace, flag: str) -> Any:
    value = getattr(args, flag.replace("-", "_"))
    return BENCH_SIZES[flag] if value is None and not args.asset_defaults else value


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """Ops config of every stage the benchmark runs: the flags, else the bench sizes (or the assets' defaults)."""
    config: dict[str, Any] = {}
    for op, fields in OPS.items():
        values = {}
        for field, flag in fields.items():
            value = size(args, flag or "batch")
            if value is not None:
                values[field] = 1 if flag is None else value
        config[op] = {"config": values}
    if args.budget:
        config["tokenizer_variants"] = {"config": {"budgets": {args.variant: args.budget}}}
    return config


def artifact_sizes(spec: dict[str, Any]) -> dict[str, int]:
    """Bytes on disk of every artifact the run left, by name."""
    from medtok_dagster import layout
    from medtok_dagster.resources import DUCKDB_FILE, PathsResource

    paths = PathsResource(data_dir=spec["data_dir"], model_dir=spec["model_dir"])
    variant, profile = spec["variant"], spec["profile"]
    model_dir = Path(spec["model_dir"])
    if spec["base_model"].startswith("embedded:"):
        from medtok_dagster.core.base_model import embedded_dir

        base = embedded_dir(at.EMBEDDED_CACHE)
    else:
        base = Path(spec["base_model"])
    sizes = {
        "base_model": at.dir_size(base),
        "tokenizer_variant": at.dir_size(layout.variant_dir(paths, variant)),
        "distilled_embeddings": at.dir_size(layout.distilled_dir(paths, variant)),
        "distill_checkpoints": at.dir_size(layout.distill_checkpoints(paths, variant)),
        "initialized_model": at.dir_size(layout.initialised_dir(paths, profile, variant)),
        "trained_adapter": at.dir_size(layout.trained_dir(paths, profile, variant)),
        "training_checkpoints": at.dir_size(layout.training_checkpoints(paths, profile, variant)),
        "merged_model": at.dir_size(layout.merged_dir(paths, profile, variant)),
        "duckdb": at.dir_size(model_dir / DUCKDB_FILE),
        "corpora": at.dir_size(model_dir / "corpora"),
        "vocab": at.dir_size(model_dir / "vocab"),
    }
    sizes["model_dir_total"] = at.dir_size(model_dir)
    return sizes


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """A fresh work directory: sample-data copy, empty model dir, Dagster home, and the spec file."""
    work = (args.work or Path(f"/tmp/medtok-at-size-{args.shape}")).resolve()
    base = (args.base_dir or Path(f"/tmp/medtok-at-size-{args.shape}-base")).resolve()
    for stale in ("data", "model", "dagster_home", "logs"):
        shutil.rmtree(work / stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    at.fresh_data_copy(work / "data")
    (work / "model").mkdir()
    if args.base_model and args.base_model.startswith("embedded:"):
        # The conversion of the embedded GGUF is shared with the repository's (it is keyed by sha256).
        at.EMBEDDED_CACHE.mkdir(parents=True, exist_ok=True)
        (work / "model" / "base").symlink_to(at.EMBEDDED_CACHE, target_is_directory=True)
    elif args.base_model:
        base = Path(args.base_model).resolve()
    spec = {
        "shape": args.shape,
        "data_dir": str(work / "data"),
        "model_dir": str(work / "model"),
        "dagster_home": str(work / "dagster_home"),
        "base_model": args.base_model
        if (args.base_model or "").startswith("embedded:")
        else str(base),
        "build": not args.base_model,
        "variant": args.variant,
        "profile": args.profile,
        "run_config": run_config(args),
        "work": str(work),
    }
    from medtok_dagster import layout
    from medtok_dagster.resources import PathsResource

    paths = PathsResource(data_dir=spec["data_dir"], model_dir=spec["model_dir"])
    spec["merged_dir"] = str(layout.merged_dir(paths, args.profile, args.variant))
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    return spec


def existing_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec of an earlier run in the work directory, for a rerun from one of its stages."""
    work = (args.work or Path(f"/tmp/medtok-at-size-{args.shape}")).resolve()
    spec_file = work / "spec.json"
    if not spec_file.is_file():
        raise SystemExit(f"{spec_file}: no earlier run to continue; run without --from-stage first")
    spec = json.loads(spec_file.read_text())
    release_dead_runs(Path(spec["dagster_home"]))
    return spec


def release_dead_runs(dagster_home: Path) -> None:
    """Mark runs a killed stage left "started" as failed and free their `gpu` pool slots.

    A stage killed by the kernel (out of memory) never reports its end, so its run keeps the pool's
    one slot and the next GPU-pool step would wait for it forever. No stage runs while the bench
    starts, so every unfinished run in its private instance is dead.
    """
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

    unfinished = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.QUEUED]
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for run in instance.get_runs(filters=RunsFilter(statuses=unfinished)):
            instance.report_run_failed(run)
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


VERSIONS = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "dagster")


def stage_argv(stage: str, spec_file: Path, result_file: Path) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--stage",
        stage,
        "--spec",
        str(spec_file),
        "--result",
        str(result_file),
    ]


def run_at_size(args: argparse.Namespace) -> dict[str, Any]:
    """Every stage in its own process, then artifact sizes; a failed stage ends the run and is reported
    under ``failure`` (its seconds, peak memory and the tail of its log).

    This process never imports torch (half a GiB the stages would not have): versions come from the
    installed packages, the device and GPU from the first stage.
    """
    from importlib.metadata import version

    spec = existing_spec(args) if args.from_stage else prepare(args)
    work = Path(spec["work"])
    spec_file, result_file = work / "spec.json", work / "stage_result.json"
    report: dict[str, Any] = {
        "benchmark": "at_size",
        "shape": args.shape,
        "device": None,
        "machine": machine(
            **{name: version(name) for name in VERSIONS},
        ),
        "partition": {"variant": args.variant, "profile": args.profile},
        "settings": spec["run_config"],
        "work": spec["work"],
        "stages": [],
    }
    started = time.monotonic()
    stages = [*(["build_model"] if spec["build"] else []), "upstream", *at.MODEL_STAGES]
    stages.append("plain_load")
    if args.from_stage:
        stages = stages[stages.index(args.from_stage) :]
    try:
        for stage in stages:
            row = at.run_stage(
                stage, stage_argv(stage, spec_file, result_file), work / "logs", result_file
            )
            device, gpu = row.pop("device", None), row.pop("gpu", None)
            report["device"] = report["device"] or device
            if gpu:
                report["gpu"] = gpu
            if stage == "build_model":
                report["model"] = row.pop("model")
            if stage == "plain_load":
                report["merged_load"] = row.pop("load")
            report["stages"].append(row)
    except at.StageFailed as failure:
        report["failure"] = {**failure.row, "log_tail": failure.tail[-4000:]}
        print(str(failure), file=sys.stderr)
    finally:
        report["total_seconds"] = round(time.monotonic() - started, 1)
        report["artifact_bytes"] = artifact_sizes(spec)
    return report


def emit(report: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(report, indent=2, default=str)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text, flush=True)


def markdown(report: dict[str, Any]) -> str:
    """The stage and artifact tables of docs/at_size.md from a report."""
    gpu = report.get("device") == "cuda"
    lines = [
        "| stage | seconds | peak RSS, process tree (GiB) | largest process (GiB) |"
        + (" peak GPU (GiB) |" if gpu else ""),
        "|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for row in report["stages"]:
        lines.append(
            f"| `{row['stage']}` | {row['seconds']:.0f} | {row['peak_rss_gib']:.2f} | "
            f"{row['max_process_rss_gib']:.2f} |"
            + (f" {row.get('peak_gpu_gib', '–')} |" if gpu else "")
        )
    if "failure" in report:
        row = report["failure"]
        lines.append(
            f"| `{row['stage']}` (failed: {row['error']}) | {row['seconds']:.0f} | "
            f"{row['peak_rss_gib']:.2f} | {row['max_process_rss_gib']:.2f} |"
        )
    lines += ["", "| artifact | bytes | GB |", "|---|---|---|"]
    for name, size in report["artifact_bytes"].items():
        lines.append(f"| {name} | {size:,} | {size / 1e9:.2f} |")
    lines.append(f"\ntotal: {report['total_seconds']:.0f} s")
    return "\n".join(lines)


def main() -> int:
    args = parser().parse_args()
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return 0
    if args.stage:
        at.stage_main(args.stage, args.spec, args.result)
        return 0
    report = run_at_size(args)
    emit(report, args.out)
    return 1 if "failure" in report else 0


if __name__ == "__main__":
    sys.exit(main())
