"""`make gpu-check`: the at-size path and the embedded demo graph at the GPU defaults, as one JSON object.

(a) ``at_size``: ``bench_at_size.py`` as it is, MedGemma 4B's shape (random weights), the
    `medgemma-4b` profile through real materializations, on CUDA when there is one.
(b) ``demo_gpu_defaults``: the embedded Gemma 3 270M through the same stages for the `embedded`
    profile at the assets' own defaults, which on a GPU are the full-size ones: every new token
    distilled (24 windows each), 200,000 calibration positions, 60 training steps at the profile's
    batch (8 × 4 blocks of 128 tokens), and model_evaluation on every exam question; the model
    figures of the trained model beside the base come from model_evaluation's metadata and check.

Each stage runs in its own process and reports seconds, peak resident memory and, on CUDA, its
peak ``torch.cuda.max_memory_allocated``. Without a GPU everything runs on the CPU and the JSON
says ``"device": "cpu"``; ``--shape tiny`` runs both parts on a 2-layer MedGemma-shaped model at
tiny sizes (the test). Offline by construction: the only models are the one built here and the
embedded GGUF; the repository is put on ``sys.path``, so carried files run without an install.

    python bench/gpu_check.py [--shape 4b|tiny] [--parts at_size demo_gpu_defaults]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _at_size as at  # noqa: E402

PARTS = ("at_size", "demo_gpu_defaults")
TINY_SIZES = [
    "--budget",
    "500",
    "--tokens",
    "16",
    "--contexts",
    "2",
    "--epochs",
    "1",
    "--calibration-positions",
    "256",
    "--steps",
    "2",
    "--seq-len",
    "32",
    "--batch",
    "1",
    "--heldout-texts",
    "2",
    "--questions",
    "2",
    "--general-lines",
    "2",
    "--control-texts",
    "1",
    "--prefill-texts",
    "1",
    "--prefill-repeats",
    "1",
]
"""Sizes of both parts at ``--shape tiny``: each stage does real work, in seconds."""
MODEL_FIGURES = (
    "questions",
    "exam_accuracy",
    "exam_bits_per_char_vs_base",
    "beats_base_on_exam_text",
    "prefill_speedup",
)
CHECK_FIGURES = (
    "base_bits_per_char",
    "trained_bits_per_char",
    "bits_per_char_difference",
    "base_accuracy",
    "trained_accuracy",
    "accuracy_difference",
)
DISTILL_FIGURES = ("distilled_tokens", "fallback_tokens", "contexts", "heldout_coverage")
TRAIN_FIGURES = ("steps", "train_loss", "tokens_per_second", "block_tokens", "quantization")


def part_argv(part: str, args: argparse.Namespace, work: Path) -> list[str]:
    """The ``bench_at_size.py`` command line of one part."""
    argv = [
        sys.executable,
        str(at.BENCH / "bench_at_size.py"),
        "--shape",
        args.shape,
        "--work",
        str(work / part),
        "--base-dir",
        str(work / f"base-{args.shape}"),
        "--out",
        str(work / f"{part}.json"),
    ]
    if part == "demo_gpu_defaults":
        base = str(work / f"base-{args.shape}") if args.shape == "tiny" else args.demo_base
        argv += ["--profile", "embedded", "--asset-defaults", "--base-model", base]
    return argv + (TINY_SIZES if args.shape == "tiny" else [])


def stage_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage: seconds, peak GPU memory (CUDA) and peak resident memory."""
    keep = ("stage", "seconds", "peak_gpu_gib", "peak_rss_gib", "max_process_rss_gib")
    return [{k: row[k] for k in keep if k in row} for row in report.get("stages", [])]


def stage_metadata(report: dict[str, Any], stage: str) -> dict[str, Any]:
    return next((r for r in report.get("stages", []) if r["stage"] == stage), {})


def summarise(part: str, report: dict[str, Any]) -> dict[str, Any]:
    """What the check prints for one part: stages, artifact sizes and (demo) the model figures."""
    summary: dict[str, Any] = {
        "device": report.get("device"),
        "partition": report.get("partition"),
        "settings": report.get("settings"),
        "total_seconds": report.get("total_seconds"),
        "stages": stage_rows(report),
        "artifact_bytes": report.get("artifact_bytes"),
    }
    if "model" in report:
        summary["model"] = {
            k: report["model"][k]
            for k in ("shape", "parameters", "embedding_parameters", "bytes")
            if k in report["model"]
        }
    if "merged_load" in report:
        summary["merged_load"] = report["merged_load"]
    if "failure" in report:
        summary["failure"] = report["failure"]
    distilled = stage_metadata(report, "distilled_embeddings").get("metadata", {})
    summary["distillation"] = {k: distilled[k] for k in DISTILL_FIGURES if k in distilled}
    trained = stage_metadata(report, "trained_adapter").get("metadata", {})
    summary["training"] = {k: trained[k] for k in TRAIN_FIGURES if k in trained}
    if part == "demo_gpu_defaults":
        evaluation = stage_metadata(report, "model_evaluation")
        meta = evaluation.get("metadata", {})
        check = evaluation.get("checks", {}).get("not_worse_than_base", {})
        summary["model_figures"] = {
            **{k: meta[k] for k in MODEL_FIGURES if k in meta},
            **{k: check[k] for k in CHECK_FIGURES if k in check},
            "not_worse_than_base": check.get("passed"),
        }
    return summary


def run_part(part: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One part as its own ``bench_at_size.py`` process; its JSON, or the error that stopped it."""
    out = work / f"{part}.json"
    out.unlink(missing_ok=True)
    print(f"[gpu-check] {part}", file=sys.stderr, flush=True)
    started = time.monotonic()
    # The part's own JSON goes to its file; its stdout joins stderr, so stdout holds one JSON object.
    done = subprocess.run(
        part_argv(part, args, work), env=at.child_env(), cwd=at.REPO, stdout=sys.stderr
    )
    if not out.is_file():
        return {
            "error": f"bench_at_size exited {done.returncode} without a report",
            "seconds": round(time.monotonic() - started, 1),
        }
    return summarise(part, json.loads(out.read_text()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("4b", "tiny"), default="4b")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--work", type=Path, default=Path("/tmp/medtok-gpu-check"))
    p.add_argument("--demo-base", default="embedded:gemma3-270m", help="base of part (b)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    import torch
    from _machine import machine

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "benchmark": "gpu_check",
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "shape": args.shape,
        "machine": machine(torch=torch.__version__, cuda=str(torch.version.cuda)),
    }
    if not cuda:
        report["note"] = "no CUDA device: every stage ran on the CPU; no GPU figure is measured"
    started = time.monotonic()
    if args.shape == "tiny" and "at_size" not in args.parts:
        at.build_model(work / "base-tiny", "tiny")
    for part in args.parts:
        report[part] = run_part(part, args, work)
    report["total_seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text, flush=True)
    failed = [part for part in args.parts if "error" in report[part] or "failure" in report[part]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
