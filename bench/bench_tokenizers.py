"""Extended tokenizers vs the base, side by side: both strategies' compression, encode speed, load time.

Builds the `ded_medical` variant with `added_tokens` and with `bpe_merge` from the candidate tables
of a finished `make demo` (``<model dir>/medtok.duckdb``), then in the same run measures, against
the base Gemma 3 tokenizer:

* compression on the held-out exam questions (test split) and on English/code (no regression);
* encode throughput on ~10 MB of Korean text (the general corpus samples, repeated);
* `AutoTokenizer.from_pretrained` load time.

Run: `make demo && .venv/bin/python bench/bench_tokenizers.py --mb 10`
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import duckdb
from _machine import machine
from transformers import AutoTokenizer

from medtok_dagster.core import metrics, tokenizer_build
from medtok_dagster.core.base_model import ensure_embedded
from medtok_dagster.core.corpus import read_lines_parquet
from medtok_dagster.core.io import read_jsonl

DATA = Path(os.environ.get("MEDTOK_DATA_DIR", "data"))
MODEL = Path(os.environ.get("MEDTOK_MODEL_DIR", "model"))


def tables() -> dict:
    with duckdb.connect(str(MODEL / "medtok.duckdb"), read_only=True) as con:
        return {
            name: con.execute(f"select * from stats.{name}").df()
            for name in ("dedicated_tokens", "candidate_tokens")
        }


def build(base, strategy: str, budget: int, out: Path):
    frames = tables()
    tier1, _, forced, notation = tokenizer_build.split_tier1(frames["dedicated_tokens"])
    pool = frames["candidate_tokens"][frames["candidate_tokens"]["tier"] == "medical"]
    units = tokenizer_build.unit_frequencies(
        read_lines_parquet(MODEL / "corpora" / "medical_corpus.parquet")
    )
    started = time.perf_counter()
    candidates = notation + [tokenizer_build.Candidate(t, "medical") for t in pool["token"]]
    plan = tokenizer_build.plan_variant(base, strategy, tier1, forced, candidates, units, budget)
    selection_s = time.perf_counter() - started
    tokenizer_build.build_extended_tokenizer(
        base, strategy, plan.tier1, plan.selection, plan.merges, out
    )
    return selection_s


def encode_mb_s(tokenizer, texts: list[str], megabytes: float) -> float:
    started = time.perf_counter()
    tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return megabytes / (time.perf_counter() - started)


def load_seconds(path: Path, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        AutoTokenizer.from_pretrained(path)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0)
    parser.add_argument("--budget", type=int, default=10_700)
    args = parser.parse_args()
    base_dir = ensure_embedded(MODEL / "base", with_model=False)
    base = AutoTokenizer.from_pretrained(base_dir)
    records, _ = read_jsonl(DATA / "01_raw/02_kor_med_test/test.jsonl", ("question",))
    exam = [r.data["question"] for r in records]
    control = [
        r.data["text"]
        for name in ("english", "code")
        for r in read_jsonl(DATA / f"03_eval/{name}.jsonl", ("text",))[0]
    ]
    samples = [
        p
        for p in sorted((MODEL / "corpora" / "general").glob("*.parquet"))
        if not p.name.endswith(".heldout.parquet")
    ]
    korean = [line for path in samples for line in read_lines_parquet(path)]
    size = sum(len(t.encode()) for t in korean)
    korean = korean * max(1, int(args.mb * 1e6 // size))
    megabytes = sum(len(t.encode()) for t in korean) / 1e6
    base_tokens = (sum(metrics.count_tokens(base, exam)), sum(metrics.count_tokens(base, control)))
    base_speed, base_load = encode_mb_s(base, korean, megabytes), load_seconds(base_dir)
    report = {
        "benchmark": "tokenizers",
        "machine": machine(),
        "korean_mb": round(megabytes, 1),
        "base_encode_mb_s": round(base_speed, 2),
        "base_load_s": round(base_load, 2),
        "strategies": {},
    }
    for strategy in tokenizer_build.STRATEGIES:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / strategy
            out.mkdir()
            selection_s = build(base, strategy, args.budget, out)
            extended = AutoTokenizer.from_pretrained(out)
            speed, load = encode_mb_s(extended, korean, megabytes), load_seconds(out)
            report["strategies"][strategy] = {
                "tokens_added": len(extended) - len(base),
                "selection_s": round(selection_s, 1),
                "exam_ratio_vs_base": round(
                    base_tokens[0] / sum(metrics.count_tokens(extended, exam)), 3
                ),
                "english_code_ratio_vs_base": round(
                    base_tokens[1] / sum(metrics.count_tokens(extended, control)), 4
                ),
                "round_trip_failures": len(metrics.round_trip_failures(extended, exam + control)),
                "encode_mb_s": round(speed, 2),
                "encode_throughput_vs_base": round(speed / base_speed, 3),
                "load_s": round(load, 2),
                "load_time_vs_base": round(load / base_load, 2),
            }
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
