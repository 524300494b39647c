"""The optional LLM describer: batched, greedy, checkpointed generation of token descriptions.

Describing 20k tokens with a 7B model takes hours, so progress is appended to a JSONL checkpoint
after every batch (flushed and fsynced) and a rerun continues after the last complete line. Greedy
decoding and batch boundaries aligned to the checkpoint make a resumed run produce exactly what an
uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medtok_dagster.core.descriptions import Description, fix_text

PROMPT = (
    "Give a short, clear English description (one sentence, 5 to 15 words) of the Korean medical or linguistic "
    'token "{token}". Use common English words only, no Korean, no quotes.'
)


def read_checkpoint(path: Path) -> dict[str, dict[str, Any]]:
    """Completed rows by token; a torn last line (killed mid-write) is dropped and truncated away."""
    if not path.exists():
        return {}
    done: dict[str, dict[str, Any]] = {}
    good_bytes = 0
    with path.open("rb") as handle:
        for raw in handle:
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                break
            if not raw.endswith(b"\n"):
                break
            done[row["token"]] = row
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return done


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def build_prompts(tokenizer: Any, tokens: Sequence[str]) -> list[str]:
    """One prompt per token, through the model's chat template when it has one."""
    texts = [PROMPT.format(token=t.replace("▁", " ").strip()) for t in tokens]
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False) for t in texts]
    return [f"{t}\nDescription:" for t in texts]


def generate_batch(model: Any, tokenizer: Any, tokens: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy, left-padded batched generation; returns the first line of each answer, cleaned."""
    import torch

    prompts = build_prompts(tokenizer, tokens)
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not getattr(tokenizer, "chat_template", None))
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [fix_text(answer.strip().split("\n")[0]) for answer in answers]


def describe_with_llm(
    model: Any,
    tokenizer: Any,
    tokens: Sequence[tuple[str, int]],
    checkpoint: Path,
    batch_size: int = 8,
    checkpoint_every: int = 64,
    max_new_tokens: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[Description]:
    """Describe ``tokens`` (``(token, id)`` pairs), resuming from ``checkpoint`` if it exists.

    Work is checkpointed every ``checkpoint_every`` tokens (rounded to whole batches); a resumed run
    restarts at the last whole checkpoint so its batches are the same as an uninterrupted run's.
    """
    tokenizer.padding_side = "left"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    chunk = max(batch_size, checkpoint_every - checkpoint_every % batch_size)
    done = read_checkpoint(checkpoint)
    finished = next((k for k, (t, _) in enumerate(tokens) if t not in done), len(tokens))
    for start in range(finished - finished % chunk, len(tokens), chunk):
        rows = []
        for batch_start in range(start, min(start + chunk, len(tokens)), batch_size):
            batch = tokens[batch_start : min(batch_start + batch_size, start + chunk)]
            texts = generate_batch(model, tokenizer, [t for t, _ in batch], max_new_tokens)
            rows.extend({"token": t, "token_id": i, "description": d, "method": "llm"} for (t, i), d in zip(batch, texts))
        _append(checkpoint, rows)
        done.update({row["token"]: row for row in rows})
        if progress:
            progress(min(start + chunk, len(tokens)), len(tokens))
    return [Description(**done[t]) for t, _ in tokens]
