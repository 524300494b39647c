"""The LLM describer: batched, greedy, checkpointed generation of token descriptions.

Each prompt is few-shot (worked examples of the wanted answer) with dictionary context for the
token: the gloss of its stem and the shortest dictionary terms that contain it. A row stops
generating once its answer has a sentence end, and only that first sentence is kept, cleaned by
:func:`medtok_dagster.core.descriptions.fix_text`. The model runs wherever the caller put it
(the asset puts it on the GPU when there is one).

Describing 20k tokens with a 7B model takes hours, so progress is appended to a JSONL checkpoint
after every batch (flushed and fsynced) and a rerun continues after the last complete line. Greedy
decoding and batch boundaries aligned to the checkpoint make a resumed run produce exactly what an
uninterrupted run would.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medtok_dagster.core import descriptions
from medtok_dagster.core.descriptions import Description, fix_text
from medtok_dagster.core.morphology import split_token
from medtok_dagster.core.text import WORD_BOUNDARY

INSTRUCTION = (
    "Each Korean token from medical text gets a short English gloss: "
    "one sentence, English words only."
)
EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("심근경색", "심근경색 = myocardial infarction", "myocardial infarction."),
    ("간호사가", "간호사 = nurse", "nurse, with the subject particle."),
    ("맥박", "맥박수 = pulse rate", "pulse."),
    ("호전되었다.", "호전 = improvement", "improved, past tense."),
    ("인슐린", "인슐린저항성 = insulin resistance", "insulin, a loanword."),
)
"""Worked examples shown before every token: a term, a word with a particle, a word the context
only hints at, an inflected verb and a loanword. None of them is in the gold set."""
CONTEXT_TERMS = 3
NO_CONTEXT = "none"
SENTENCE_END_RE = re.compile(r"[.!?\n]")


def read_checkpoint(path: Path) -> dict[str, dict[str, Any]]:
    """Completed rows by token; a torn last line (killed mid-write) is dropped and truncated."""
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


def dictionary_context(token: str, glossary: Mapping[str, str]) -> str:
    """What the dictionary says about a token: its stem's gloss and the terms it is part of.

    The terms are context, not an answer: the model has to decide whether the token is the term,
    a piece of it, or unrelated. The shortest terms come first (the closest to the token).
    """
    surface = token.removeprefix(WORD_BOUNDARY)
    stem = split_token(surface).stem_text or surface
    entries = []
    known = descriptions.lookup(stem, glossary)
    if known:
        entries.append(f"{stem} = {known}")
    containing = sorted((t for t in glossary if stem in t and t != stem), key=lambda t: (len(t), t))
    entries.extend(f"{t} = {glossary[t]}" for t in containing[:CONTEXT_TERMS])
    return "; ".join(entries) or NO_CONTEXT


def few_shot_prompt(token: str, glossary: Mapping[str, str]) -> str:
    """The instruction, the worked examples, then the token with its dictionary context."""
    shots = "".join(f"Token: {t}\nDictionary: {c}\nGloss: {g}\n\n" for t, c, g in EXAMPLES)
    word = token.replace(WORD_BOUNDARY, " ").strip()
    context = dictionary_context(token, glossary)
    return f"{INSTRUCTION}\n\n{shots}Token: {word}\nDictionary: {context}\nGloss:"


def build_prompts(tokenizer: Any, tokens: Sequence[str], glossary: Mapping[str, str]) -> list[str]:
    """One prompt per token, through the model's chat template when it has one."""
    texts = [few_shot_prompt(t, glossary) for t in tokens]
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
            )
            for t in texts
        ]
    return texts


def first_sentence(answer: str) -> str:
    """The answer up to its first sentence end, cleaned; echoing the empty context is no answer."""
    sentence = fix_text(SENTENCE_END_RE.split(answer.strip(), maxsplit=1)[0])
    return "" if sentence.lower() == NO_CONTEXT else sentence


def sentence_stop(tokenizer: Any, prompt_length: int) -> Any:
    """Stopping criteria: a row is done once its answer contains a sentence end."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class SentenceEnd(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            answers = tokenizer.batch_decode(input_ids[:, prompt_length:], skip_special_tokens=True)
            return torch.tensor(
                [bool(SENTENCE_END_RE.search(a.lstrip())) for a in answers], device=input_ids.device
            )

    return StoppingCriteriaList([SentenceEnd()])


def generate_batch(
    model: Any,
    tokenizer: Any,
    tokens: Sequence[str],
    glossary: Mapping[str, str],
    max_new_tokens: int,
) -> list[str]:
    """Greedy, left-padded batched generation on the model's device; first sentence of each."""
    import torch

    prompts = build_prompts(tokenizer, tokens, glossary)
    inputs = tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        add_special_tokens=not getattr(tokenizer, "chat_template", None),
    )
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=sentence_stop(tokenizer, length),
        )
    answers = tokenizer.batch_decode(output[:, length:], skip_special_tokens=True)
    return [first_sentence(answer) for answer in answers]


def describe_with_llm(
    model: Any,
    tokenizer: Any,
    tokens: Sequence[tuple[str, int]],
    checkpoint: Path,
    glossary: Mapping[str, str] | None = None,
    batch_size: int = 8,
    checkpoint_every: int = 64,
    max_new_tokens: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[Description]:
    """Describe ``tokens`` (``(token, id)`` pairs), resuming from ``checkpoint`` if it exists.

    Work is checkpointed every ``checkpoint_every`` tokens (rounded to whole batches); a resumed run
    restarts at the last whole checkpoint so its batches are the same as an uninterrupted run's.
    """
    glossary = glossary or {}
    tokenizer.padding_side = "left"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    chunk = max(batch_size, checkpoint_every - checkpoint_every % batch_size)
    done = read_checkpoint(checkpoint)
    finished = next((k for k, (t, _) in enumerate(tokens) if t not in done), len(tokens))
    for start in range(finished - finished % chunk, len(tokens), chunk):
        rows = []
        for batch_start in range(start, min(start + chunk, len(tokens)), batch_size):
            batch = tokens[batch_start : min(batch_start + batch_size, start + chunk)]
            texts = generate_batch(
                model, tokenizer, [t for t, _ in batch], glossary, max_new_tokens
            )
            rows.extend(
                {"token": t, "token_id": i, "description": d, "method": "llm"}
                for (t, i), d in zip(batch, texts)
            )
        _append(checkpoint, rows)
        done.update({row["token"]: row for row in rows})
        if progress:
            progress(min(start + chunk, len(tokens)), len(tokens))
    return [Description(**done[t]) for t, _ in tokens]
