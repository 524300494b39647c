"""Distillation initialisation: throughput, cost per new token, and tied vs untied rows, measured side by side.

On the embedded Gemma 3 270M and the `ded_medical` tokenizer `make demo` leaves behind, distils the
N most frequent new tokens from the training corpora several ways and scores each on the same
held-out exam questions (every character, from <bos>) beside the base model and `subtoken_mean`:

* `tied` (the default): one row per token; only row directions the output layer hardly reads may
  move (`keep_output`), so the row keeps `subtoken_mean`'s output calibration; shared windows (a
  window learns every new token in it); rows not distilled get `subtoken_mean` + the change a ridge
  map predicts from their pieces;
* `tied_isolated`: the same with isolated windows (each learns only its own occurrence);
* `tied_mean_fallback`: rows not distilled keep `subtoken_mean`;
* `tied_free`: one row, no such constraint (the input objective also moves the output logits);
* `untied`: learned input rows, output rows left at `subtoken_mean` (needs an untied output layer).
  The last two keep `subtoken_mean` for rows not distilled, as when they were measured.

Prints JSON: bits/char per option, teacher and student throughput (tokens per second), seconds per
distilled token, and what untying costs in adapter and merged-model bytes.

Run after `make demo`: `.venv/bin/python bench/bench_distill.py --tokens 300 --questions 64`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from _machine import machine

from medtok_dagster import layout, readers
from medtok_dagster.assets.model import (
    base_vocab_size,
    build_initialized,
    calibrated,
    tokens_of_variant,
    training_sources,
)
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import calibration, distill, lm_metrics, training
from medtok_dagster.resources import build_resources

OPTIONS = {
    "tied": {"mode": "tied", "keep_output": 0.9},
    "tied_isolated": {"mode": "tied", "keep_output": 0.9, "isolate": True},
    "tied_mean_fallback": {"mode": "tied", "keep_output": 0.9, "predict_fallback": False},
    "tied_free": {"mode": "tied", "keep_output": 0.0, "predict_fallback": False},
    "untied": {"mode": "untied", "output_weight": 0.0, "predict_fallback": False},
}


def untie(model) -> None:
    """Give the output layer its own copy of the matrix (what the untied option ships)."""
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.get_text_config().tie_word_embeddings = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokens", type=int, default=300, help="new tokens distilled (most frequent first)"
    )
    parser.add_argument("--contexts", type=int, default=4)
    parser.add_argument(
        "--before", type=int, default=16, help="context tokens before the new token"
    )
    parser.add_argument("--after", type=int, default=6, help="context tokens after it")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument(
        "--min-contexts", type=int, default=1, help="windows a row needs to be kept (the demo: 1)"
    )
    parser.add_argument(
        "--calibration-positions",
        type=int,
        default=0,
        help="also score each option after output calibration on this many training positions",
    )
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--variant", default="ded_medical")
    args = parser.parse_args()
    resources = build_resources(
        os.environ.get("MEDTOK_DATA_DIR", "data"), os.environ.get("MEDTOK_MODEL_DIR", "model")
    )
    paths, base_model = resources["paths"], resources["base_model"]
    held_out = [q.question for q in readers.exam_questions(paths)][: args.questions]
    source = base_model.source()
    dtype = training.inference_settings()[1]
    base = core_base_model.load_causal_lm(source, dtype=dtype)
    base_tokenizer = core_base_model.load_tokenizer(source)
    reference = lm_metrics.score_texts(base, base_tokenizer, held_out)
    del base
    tokens = tokens_of_variant(paths, args.variant)
    base_len = base_vocab_size(paths, args.variant)
    sources = training_sources(paths)
    lines = [line for part in sources.values() for line in part]
    results = {"base": {"bits_per_char": round(reference.bits_per_char, 4)}}
    model, tokenizer, _ = build_initialized(
        base_model, paths, args.variant, tokens, "subtoken_mean", None
    )
    hidden = model.config.get_text_config().hidden_size
    results["subtoken_mean"] = {
        "bits_per_char": round(
            lm_metrics.score_texts(model.to(dtype), tokenizer, held_out).bits_per_char, 4
        )
    }
    for name in args.options:
        settings = OPTIONS[name]
        model, tokenizer, _ = build_initialized(
            base_model, paths, args.variant, tokens, "subtoken_mean", None
        )
        if settings["mode"] == "untied":
            untie(model)
        config = distill.DistillConfig(
            max_tokens=args.tokens,
            contexts_per_token=args.contexts,
            context_before=args.before,
            context_after=args.after,
            epochs=args.epochs,
            min_contexts=args.min_contexts,
            **settings,
        )
        started = time.perf_counter()
        result = distill.distill(
            model, tokenizer, base_tokenizer, lines, [t.token_id for t in tokens], base_len, config
        )
        seconds = time.perf_counter() - started
        distill.apply(model, result, base_len)
        coverage, _ = distill.coverage(tokenizer, base_len, set(result.distilled), held_out)
        score = lm_metrics.score_texts(
            training.in_precision(model, dtype, keep=True), tokenizer, held_out
        )
        results[name] = {
            "bits_per_char": round(score.bits_per_char, 4),
            "vs_base": round(score.bits_per_char / reference.bits_per_char - 1, 4),
            "distilled_tokens": len(result.distilled),
            "heldout_coverage": round(coverage, 4),
            "contexts": result.contexts,
            "seconds": round(seconds, 1),
            "seconds_per_distilled_token": round(seconds / max(len(result.distilled), 1), 4),
            "student_tokens_per_second": result.stats["tokens_per_second"],
            "teacher_seconds": result.stats["teacher_seconds"],
            "frozen_directions": result.stats["frozen_directions"],
            "fallback_rows": result.fallback_rule(),
        }
        if args.calibration_positions:
            fitted = calibrated(
                model,
                tokenizer,
                result,
                sources,
                base_len,
                calibration.CalibrationConfig(positions=args.calibration_positions),
                lambda message: print(message, file=sys.stderr),
            )
            distill.apply(model, result, base_len)
            after = lm_metrics.score_texts(model.to(dtype), tokenizer, held_out).bits_per_char
            results[name]["calibrated"] = {
                "bits_per_char": round(after, 4),
                "vs_base": round(after / reference.bits_per_char - 1, 4),
                **fitted.stats,
            }
        del model
    vocab_rows = base_len + len(tokens)
    print(
        json.dumps(
            {
                "benchmark": "distillation_init",
                "machine": machine(
                    torch=torch.__version__, torch_threads=str(torch.get_num_threads())
                ),
                "model": "embedded gemma3-270m (hidden 640), distilled in fp32 with bf16 autocast",
                "scored_in": str(dtype).removeprefix("torch."),
                "settings": {
                    "tokens": args.tokens or "all",
                    "contexts_per_token": args.contexts,
                    "context_before": args.before,
                    "context_after": args.after,
                    "epochs": args.epochs,
                    "min_contexts": args.min_contexts,
                    "calibration_positions": args.calibration_positions,
                },
                "variant": args.variant,
                "new_tokens": len(tokens),
                "held_out_questions": len(held_out),
                "results": results,
                "untied_costs": {
                    "extra_adapter_bytes_fp32": len(tokens) * hidden * 4,
                    "extra_merged_model_bytes_fp32": vocab_rows * hidden * 4,
                    "extra_merged_model_bytes_bf16_medgemma_4b": vocab_rows * 2560 * 2,
                    "extra_merged_model_bytes_bf16_medgemma_27b": vocab_rows * 5376 * 2,
                },
                "layout": str(layout.distilled_dir(paths, args.variant)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
