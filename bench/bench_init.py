"""Embedding initialisation: the vectorised path vs the prototype's per-token loop, same model, same rows.

Initialises 20,000 new rows (``description_mean``) of the embedded Gemma 3 270M both ways in one run,
checks the rows are identical, and prints JSON with both timings and their ratio.

Run: `.venv/bin/python bench/bench_init.py --tokens 20000`
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _machine import machine
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core import embeddings as E
from medtok_dagster.core.base_model import ensure_embedded

WORDS = [
    "heart",
    "kidney",
    "acute",
    "chronic",
    "inflammation",
    "blood",
    "pressure",
    "infection",
    "drug",
    "therapy",
    "pain",
    "tumour",
]


def synthetic_tokens(base_len: int, count: int) -> list[E.NewToken]:
    """Distinct tokens with 2–4-word English descriptions, like reviewed descriptions."""
    return [
        E.NewToken(
            f"▁tok{i}",
            base_len + i,
            "ngram",
            " ".join(WORDS[(i + k * 5) % len(WORDS)] for k in range(2 + i % 3)),
            "morpheme",
        )
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("MEDTOK_MODEL_DIR", "model")) / "base"
    )
    args = parser.parse_args()
    model_dir = ensure_embedded(args.cache, with_model=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base_len = len(tokenizer)
    tokens = synthetic_tokens(base_len, args.tokens)
    timings, weights = {}, {}
    for name in ("vectorised", "per_token_loop"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        E.resize_for(model, base_len + args.tokens)
        started = time.perf_counter()
        if name == "vectorised":
            E.apply_init(
                model, E.plan_init(tokens, "description_mean", tokenizer, base_len), base_len
            )
        else:
            E.apply_init_loop(model, tokens, tokenizer, base_len)
        timings[name] = time.perf_counter() - started
        weights[name] = model.get_input_embeddings().weight[base_len:].detach().clone()
        del model
    print(
        json.dumps(
            {
                "benchmark": "embedding_init",
                "machine": machine(
                    torch=torch.__version__, torch_threads=str(torch.get_num_threads())
                ),
                "model": "embedded gemma3-270m (fp32, hidden 640)",
                "new_tokens": args.tokens,
                "vectorised_s": round(timings["vectorised"], 3),
                "per_token_loop_s": round(timings["per_token_loop"], 3),
                "speedup": round(timings["per_token_loop"] / timings["vectorised"], 1),
                "identical_rows": bool(
                    torch.allclose(weights["vectorised"], weights["per_token_loop"], atol=1e-6)
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
