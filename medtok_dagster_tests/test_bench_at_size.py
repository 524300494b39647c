"""`make gpu-check` and the at-size benchmark at a tiny MedGemma shape, on the CPU, end to end.

One run of `bench/gpu_check.py --shape tiny` drives both of its parts through `bench/bench_at_size.py`:
(a) the `medgemma-4b` profile on a random-weight 2-layer `Gemma3ForConditionalGeneration` with a
SigLIP tower and MedGemma's padded vocabulary, (b) the `embedded` profile at the assets' own
defaults (sizes given at tiny), each stage a real Dagster materialization in its own process.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medtok_dagster_tests.conftest import REPO

pytestmark = pytest.mark.slow

AT_SIZE_STAGES = [
    "build_model",
    "upstream",
    "distilled_embeddings",
    "initialized_model",
    "trained_adapter",
    "merged_model",
    "model_evaluation",
    "plain_load",
]
ARTIFACTS = (
    "base_model",
    "tokenizer_variant",
    "distilled_embeddings",
    "initialized_model",
    "trained_adapter",
    "merged_model",
    "duckdb",
    "model_dir_total",
)


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--shape", "tiny", "--work", str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(done.stdout), work


def test_at_size_path_reports_every_stage_and_artifact_and_the_merged_model_loads(gpu_check):
    _, work = gpu_check
    report = json.loads((work / "at_size.json").read_text())
    assert "failure" not in report
    assert report["device"] == "cpu" and report["shape"] == "tiny"
    assert report["partition"] == {"variant": "ded_medical", "profile": "medgemma-4b"}
    assert [row["stage"] for row in report["stages"]] == AT_SIZE_STAGES
    for row in report["stages"]:
        assert row["seconds"] > 0 and row["peak_rss_gib"] > 0, row
        assert row["max_process_rss_gib"] > 0, row
    for name in ARTIFACTS:
        assert report["artifact_bytes"][name] > 0, name
    model = report["model"]
    assert model["architecture"] == "Gemma3ForConditionalGeneration"
    assert model["vocab_rows"] == 262_208 and model["tokenizer_length"] == 262_145
    assert model["dtype"] == "bfloat16"
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["ram_gb"] > 0
    stages = {row["stage"]: row for row in report["stages"]}
    trained = stages["trained_adapter"]["metadata"]
    assert trained["quantization"] == "8bit" and trained["quantized_linear_modules"] > 0
    assert trained["vision_lora_modules"] == 0 and trained["steps"] == 2
    assert stages["distilled_embeddings"]["metadata"]["distilled_tokens"] > 0
    loaded = report["merged_load"]
    assert loaded["architecture"] == "Gemma3ForConditionalGeneration"
    assert loaded["has_vocab_rows"] and loaded["vocab_rows"] >= loaded["tokenizer_length"] > 262_145
    assert loaded["logits_width"] == loaded["vocab_rows"] and loaded["logits_finite"]


def test_plain_transformers_loads_the_merged_model_with_its_new_rows(gpu_check):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, work = gpu_check
    spec = json.loads((work / "at_size" / "spec.json").read_text())
    merged = Path(spec["merged_dir"])
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer) > 262_145


def test_gpu_check_degrades_to_the_cpu_and_says_so(gpu_check):
    report, _ = gpu_check
    assert report["device"] == "cpu" and report["gpu"] is None
    assert "no GPU figure" in report["note"]
    for part in ("at_size", "demo_gpu_defaults"):
        summary = report[part]
        assert "failure" not in summary and "error" not in summary, summary
        assert summary["device"] == "cpu"
        for row in summary["stages"]:
            assert row["seconds"] > 0 and row["peak_rss_gib"] > 0, row
            assert "peak_gpu_gib" not in row, "no GPU figure without a GPU"
    demo = report["demo_gpu_defaults"]
    assert demo["partition"]["profile"] == "embedded"
    assert [r["stage"] for r in demo["stages"]] == AT_SIZE_STAGES[1:], "the base is not built"
    figures = demo["model_figures"]
    for name in ("base_bits_per_char", "trained_bits_per_char", "base_accuracy", "exam_accuracy"):
        assert isinstance(figures[name], float), (name, figures)
    assert figures["questions"] == 2 and isinstance(figures["not_worse_than_base"], bool)
