"""Exam scoring speed: shared-prefix, scored-positions-only option scoring vs a naive per-option loop.

Scores the test split's five-option questions with the embedded Gemma 3 270M both ways on the same
questions (same log-likelihoods, checked), then times the exam pass `model_evaluation` runs (question
bits/char and all five options, one forward per question) over every question for the three stages
`make demo` leaves behind (base, initialised, trained: the merged model).
Prints JSON with both timings, their ratio and the three-stage total.

Run after `make demo`: `.venv/bin/python bench/bench_eval.py --naive-questions 16`
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from _machine import machine

from medtok_dagster import readers
from medtok_dagster.assets.evaluation import load_stage
from medtok_dagster.core import evaluation, lm_metrics
from medtok_dagster.resources import build_resources


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--naive-questions",
        type=int,
        default=16,
        help="questions both paths score (the naive loop is slow)",
    )
    parser.add_argument("--variant", default="ded_medical")
    parser.add_argument("--profile", default="embedded")
    args = parser.parse_args()
    resources = build_resources(
        os.environ.get("MEDTOK_DATA_DIR", "data"), os.environ.get("MEDTOK_MODEL_DIR", "model")
    )
    paths, base_model = resources["paths"], resources["base_model"]
    questions = readers.exam_questions(paths)
    model, tokenizer = load_stage("base", paths, base_model, args.profile, args.variant)
    model_dtype = model.dtype
    sample = questions[: args.naive_questions]
    naive_s, naive = timed(lm_metrics.score_options_naive, model, tokenizer, sample)
    fast_s, fast = timed(lm_metrics.score_options, model, tokenizer, sample)
    worst = max(abs(a - b) for x, y in zip(naive.logprobs, fast.logprobs) for a, b in zip(x, y))
    stages = {}
    for stage in evaluation.STAGES:
        if stage != "base":
            model, tokenizer = load_stage(stage, paths, base_model, args.profile, args.variant)
        seconds, scores = timed(lm_metrics.score_exam, model, tokenizer, questions)
        stages[stage] = {
            "seconds": round(seconds, 1),
            "exam_bits_per_char": round(scores.questions.bits_per_char, 4),
            "accuracy": round(lm_metrics.exam_accuracy(questions, scores.options).accuracy, 4),
        }
        del model
    print(
        json.dumps(
            {
                "benchmark": "exam_option_scoring",
                "machine": machine(
                    torch=torch.__version__, torch_threads=str(torch.get_num_threads())
                ),
                "model": f"embedded gemma3-270m ({str(model_dtype).removeprefix('torch.')})",
                "questions_compared": len(sample),
                "naive_per_option_loop_s": round(naive_s, 2),
                "shared_prefix_s": round(fast_s, 2),
                "speedup": round(naive_s / fast_s, 1),
                "max_abs_logprob_difference": round(worst, 5),
                "all_questions": len(questions),
                "three_stages": stages,
                "three_stages_total_s": round(sum(s["seconds"] for s in stages.values()), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
