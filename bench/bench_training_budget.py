"""How much Phase-0 training the extended model needs to read held-out exam text as well as its base.

Starts from the initialised adapter `make demo` leaves behind (embedded Gemma 3 270M, `ded_medical`,
LoRA + trainable new rows) and trains it exactly as the `trained_adapter` asset does (the same
`training.phase0_trainer`: the corpus mixture, `<bos>`-packed blocks, cosine schedule), once per
step count on the ladder, since the schedule depends on the run's length. Beside it, as the control
a fair reader needs, the base model on its own tokenizer gets the same LoRA and the same training:
how much of the gain is the training data rather than the tokenizer. Every model is scored on the
same held-out exam questions (every character, from `<bos>`) beside the untouched base model.

Run after `make demo`: `.venv/bin/python bench/bench_training_budget.py --steps 0 96`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from typing import Any

import torch
from _machine import machine

from medtok_dagster import layout, readers
from medtok_dagster.configs import MEDICAL_SHARE, TrainConfig, phase0_plan
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import lm_metrics, training
from medtok_dagster.core.io import read_json
from medtok_dagster.resources import build_resources

ARMS = ("extended", "base_tokenizer")
"""The extended model (new tokens, distilled rows) and the control: the base model, same LoRA and data."""


def trained_score(
    arm: str, steps: int, args: argparse.Namespace, resources: dict[str, Any], held_out: list[str]
) -> lm_metrics.TextScore:
    """Held-out exam score of one arm after ``steps`` Phase-0 steps from a fresh load."""
    paths, source = resources["paths"], resources["base_model"].source()
    lora = training.profile(args.profile)
    model = training.load_base(source, lora, for_training=True)
    if arm == "extended":
        init_dir = layout.initialised_dir(paths, args.profile, args.variant)
        info = read_json(init_dir / training.INIT_INFO)
        tokenizer = core_base_model.load_local_tokenizer(init_dir)
        new_ids = range(info["base_vocab_size"], len(tokenizer))
        model = training.load_adapter(model, init_dir, len(tokenizer), new_ids, is_trainable=True)
    else:
        tokenizer = core_base_model.load_tokenizer(source)
        model = training.attach_lora(model, lora, [], "frozen")
    if steps:
        with tempfile.TemporaryDirectory() as checkpoints:
            run = TrainConfig(
                max_steps=steps,
                save_steps=steps + 1,
                per_device_batch=args.batch,
                grad_accum=1,
                max_seq_len=args.block,
                medical_share=args.medical_share,
            )
            plan = phase0_plan(
                paths, resources["base_model"], args.profile, args.variant, run, checkpoints
            )
            with contextlib.redirect_stdout(sys.stderr):
                training.phase0_trainer(model, tokenizer, plan, lora).train()
    model.eval()
    scoring = training.in_precision(model, training.inference_settings()[1], keep=False)
    with torch.no_grad():
        return lm_metrics.score_texts(scoring, tokenizer, held_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 96])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--medical-share", type=float, default=MEDICAL_SHARE)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--variant", default="ded_medical")
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    args = parser.parse_args()
    resources = build_resources(
        os.environ.get("MEDTOK_DATA_DIR", "data"), os.environ.get("MEDTOK_MODEL_DIR", "model")
    )
    held_out = [q.question for q in readers.exam_questions(resources["paths"])][: args.questions]
    source = resources["base_model"].source()
    reference_model = training.load_base(source, training.profile(args.profile))
    reference_model = training.in_precision(
        reference_model, training.inference_settings()[1], keep=False
    )
    with torch.no_grad():
        reference = lm_metrics.score_texts(
            reference_model, core_base_model.load_tokenizer(source), held_out
        ).bits_per_char
    del reference_model
    curve, started = [], time.perf_counter()
    for steps in sorted(args.steps):
        point: dict[str, Any] = {"step": steps, "tokens_trained": steps * args.batch * args.block}
        for arm in args.arms:
            score = trained_score(arm, steps, args, resources, held_out)
            point[f"{arm}_bits_per_char"] = round(score.bits_per_char, 4)
            point[f"{arm}_vs_base"] = round(score.bits_per_char / reference - 1, 4)
            point[f"{arm}_tokens_per_char"] = round(score.tokens_per_char, 4)
        point["elapsed_s"] = round(time.perf_counter() - started, 1)
        curve.append(point)
        print(json.dumps(point), flush=True)
    closes = next(
        (p["step"] for p in curve if p.get("extended_bits_per_char", reference + 1) <= reference),
        None,
    )
    print(
        json.dumps(
            {
                "benchmark": "training_budget",
                "machine": machine(
                    torch=torch.__version__, torch_threads=str(torch.get_num_threads())
                ),
                "model": "embedded gemma3-270m, trained in fp32, scored in the inference precision",
                "arms": {
                    "extended": "LoRA from the initialised adapter, new rows trained or frozen as its embedding mode says",
                    "base_tokenizer": "the base model and tokenizer, the same LoRA and training",
                },
                "held_out_questions": len(held_out),
                "base_bits_per_char": round(reference, 4),
                "batch": f"{args.batch} x {args.block} tokens",
                "medical_share": args.medical_share,
                "learning_rate": training.profile(args.profile).learning_rate,
                "curve": curve,
                "first_step_at_least_as_good_as_base": closes,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
