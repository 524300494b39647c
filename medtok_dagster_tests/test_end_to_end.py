"""The whole graph, raw corpora → trained adapter, on the sample data with a tiny Gemma 3 and the real tokenizer."""

import json

import dagster as dg
import duckdb
import pytest

from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.definitions import build_definitions
from medtok_dagster.demo import base_model_warmer, blocking_failures, format_report, run_demo
from medtok_dagster.resources import DUCKDB_FILE, DUCKDB_SCHEMA

pytestmark = pytest.mark.slow

FAST_CONFIG = {
    "ops": {
        "tokenizer_variants": {
            "config": {"budgets": {"dedicated": 1500, "ded_medical": 3000, "ded_med_normal": 5000}}
        },
        "tokenizer_efficiency": {"config": {"curve_budgets": [500, 1500, 3000]}},
        "distilled_embeddings": {
            "config": {
                "max_tokens": 40,
                "contexts_per_token": 2,
                "context_before": 8,
                "context_after": 4,
                "epochs": 1.0,
                "calibration_positions": 2000,
            }
        },
        "init_comparison": {
            "config": {"strategies": ["mean", "distill"], "steps": 2, "eval_texts": 64}
        },
        "trained_adapter": {
            "config": {
                "max_steps": 4,
                "save_steps": 2,
                "per_device_batch": 2,
                "grad_accum": 1,
                "max_seq_len": 64,
                "heldout_texts": 8,
            }
        },
        "model_evaluation": {
            "config": {
                "exam_questions": 16,
                "general_lines": 8,
                "control_texts": 4,
                "prefill_texts": 8,
                "prefill_repeats": 1,
            }
        },
    }
}


def test_whole_graph_end_to_end(tmp_path, data_dir, model_dir, tiny_gemma_dir):
    defs = build_definitions(str(data_dir), str(model_dir), str(tiny_gemma_dir))
    with dg.DagsterInstance.ephemeral() as instance:
        report = run_demo(defs, instance, run_config=FAST_CONFIG)
    print(format_report(report))
    assert not blocking_failures(report), report.checks
    expected = {
        "special_chars_report",
        "dedicated_tokens",
        "medical_corpus",
        "bpe_medical",
        "bpe_general",
        "ngram_candidates",
        "candidate_tokens",
        "tokenizer_variants[ded_med_normal]",
        "tokenizer_efficiency",
        "token_descriptions[ded_medical]",
        "initialized_model[embedded|ded_medical]",
        "init_comparison",
        "trained_adapter[embedded|ded_medical]",
        "distilled_embeddings[ded_medical]",
        "merged_model[embedded|ded_medical]",
        "model_evaluation[embedded|ded_medical]",
    }
    assert expected <= set(report.materialized), set(report.materialized)
    with duckdb.connect(str(model_dir / DUCKDB_FILE), read_only=True) as con:
        efficiency = con.execute(f"select * from {DUCKDB_SCHEMA}.tokenizer_efficiency").df()
        curve = con.execute(f"select * from {DUCKDB_SCHEMA}.trained_adapter").df()
        evaluation = con.execute(f"select * from {DUCKDB_SCHEMA}.model_evaluation").df()
        comparison = con.execute(f"select * from {DUCKDB_SCHEMA}.init_comparison").df()
    exam = efficiency[
        (efficiency.text_type == "exam_sentences") & (efficiency.tokenizer == "ded_medical")
    ]
    assert exam["ratio_vs_base"].iloc[0] > 1.2
    assert efficiency["round_trip_failures"].sum() == 0
    assert len(curve) == 4
    metrics = json.loads(
        (model_dir / "trained" / "embedded" / "ded_medical" / "metrics.json").read_text()
    )
    assert metrics["steps"] == 4
    assert (model_dir / "trained" / "embedded" / "ded_medical" / "README.md").exists()
    assert len(evaluation) == 3 * 4 and set(evaluation["stage"]) == {
        "base",
        "initialized",
        "trained",
    }
    assert set(comparison["strategy"]) == {"base model, base tokenizer", "mean", "distill"}
    assert (comparison[comparison.stage == "after_init"]["texts"] == 64).all()
    assert set(comparison["stage"]) == {"reference", "after_init", "after_2_steps"}
    assert any(check == "not_worse_than_base" for _, check, _, _ in report.checks)


def test_the_demo_converts_only_an_embedded_base_model_in_the_background(tmp_path):
    settings = {"data_dir": str(tmp_path / "data"), "model_dir": str(tmp_path / "model")}
    assert base_model_warmer({**settings, "base_model": "google/medgemma-4b-it"}) is None
    warmer = base_model_warmer({**settings, "base_model": "embedded:gemma3-270m"})
    assert warmer._target is core_base_model.warm_embedded
    assert warmer._args == (tmp_path / "model" / "base",)
    assert warmer.daemon, "an interrupted demo does not leave a converter behind"
