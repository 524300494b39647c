"""How much Phase-0 training the extended model needs to read held-out exam text as well as its base.

Starts from the initialised adapter `make demo` leaves behind (embedded Gemma 3 270M, `ded_medical`,
LoRA + trainable new rows), trains on the same `<bos>`-packed training corpora the `trained_adapter`
asset uses, and scores held-out exam questions (every character, from `<bos>`) at a ladder of
steps, beside the untouched base model on the same characters. Prints JSON with the curve and the
first step at which the extended model is at least as good as the base (or null).

Run after `make demo`: `.venv/bin/python bench/bench_training_budget.py --steps 0 25 50 100 --batch 4`
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from _machine import machine

from medtok_dagster import layout, readers
from medtok_dagster.core import base_model as core_base_model
from medtok_dagster.core import lm_metrics, training
from medtok_dagster.core.io import read_json
from medtok_dagster.resources import build_resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 25, 50, 100, 200])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--questions", type=int, default=112)
    parser.add_argument("--variant", default="ded_medical")
    parser.add_argument("--profile", default="embedded")
    args = parser.parse_args()
    resources = build_resources(
        os.environ.get("MEDTOK_DATA_DIR", "data"), os.environ.get("MEDTOK_MODEL_DIR", "model")
    )
    paths, base_model = resources["paths"], resources["base_model"]
    held_out = [q.question for q in readers.exam_questions(paths)][: args.questions]
    source = base_model.source()
    lora = training.profile(args.profile)
    model = training.load_base(source, lora)
    reference = lm_metrics.score_texts(model, core_base_model.load_tokenizer(source), held_out)
    init_dir = layout.initialised_dir(paths, args.profile, args.variant)
    info = read_json(init_dir / training.INIT_INFO)
    tokenizer = core_base_model.load_local_tokenizer(init_dir)
    model = training.load_adapter(
        model,
        init_dir,
        len(tokenizer),
        range(info["base_vocab_size"], len(tokenizer)),
        is_trainable=True,
    )
    documents = lm_metrics.encode_plain(
        tokenizer, readers.medical_lines(paths) + readers.general_training_lines(paths)
    )
    blocks = training.pack_blocks(
        documents, args.block, tokenizer.bos_token_id, tokenizer.eos_token_id
    )
    curve, done, started = [], 0, time.perf_counter()
    for target in sorted(args.steps):
        if target > done:
            training.quick_train(
                model,
                blocks,
                tokenizer.bos_token_id,
                target - done,
                lora.learning_rate,
                batch_size=args.batch,
                seed=done,
            )
            done = target
        score = lm_metrics.score_texts(model, tokenizer, held_out)
        curve.append(
            {
                "step": done,
                "tokens_trained": done * args.batch * args.block,
                "bits_per_char": round(score.bits_per_char, 4),
                "vs_base": round(score.bits_per_char / reference.bits_per_char - 1, 4),
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(curve[-1]), flush=True)
    closes = next(
        (point["step"] for point in curve if point["bits_per_char"] <= reference.bits_per_char),
        None,
    )
    print(
        json.dumps(
            {
                "benchmark": "training_budget",
                "machine": machine(
                    torch=torch.__version__, torch_threads=str(torch.get_num_threads())
                ),
                "model": "embedded gemma3-270m (fp32), LoRA r=8 + trainable new rows",
                "init_strategy": info["strategy"],
                "held_out_questions": len(held_out),
                "base_bits_per_char": round(reference.bits_per_char, 4),
                "batch": f"{args.batch} x {args.block} tokens",
                "learning_rate": lora.learning_rate,
                "curve": curve,
                "first_step_at_least_as_good_as_base": closes,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
