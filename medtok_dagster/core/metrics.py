"""Tokenizer efficiency on held-out text: tokens per character and word, ratio to base, round trip.

Measured per text type, because a vocabulary can look good on exam sentences while regressing on
English or code; those two are the no-regression control.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from medtok_dagster.core.text import MCQ_OPTION_FIELDS
from medtok_dagster.core.tokenizer_build import tokenizer_with_added

SYMBOL_CONTEXT = 8


def _backend(tokenizer: Any) -> Any:
    """Accept a transformers tokenizer or a bare ``tokenizers.Tokenizer`` (budget-curve prefixes)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Token counts without special tokens, batched through the Rust backend."""
    encodings = _backend(tokenizer).encode_batch(list(texts), add_special_tokens=False)
    return [len(e.ids) for e in encodings]


def round_trip_failures(tokenizer: Any, texts: Sequence[str]) -> list[str]:
    """Texts that do not decode back to themselves exactly."""
    backend = _backend(tokenizer)
    encodings = backend.encode_batch(list(texts), add_special_tokens=False)
    decoded = backend.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    return [text for text, back in zip(texts, decoded) if text != back]


@dataclass(frozen=True)
class Efficiency:
    """Totals for one tokenizer on one text type."""

    texts: int
    chars: int
    words: int
    tokens: int
    round_trip_failures: int

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.chars, 1)

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / max(self.words, 1)


def measure(tokenizer: Any, texts: Sequence[str]) -> Efficiency:
    """Token, character and word totals plus exact round-trip failures."""
    return Efficiency(
        texts=len(texts),
        chars=sum(len(t) for t in texts),
        words=sum(len(t.split()) for t in texts),
        tokens=sum(count_tokens(tokenizer, texts)),
        round_trip_failures=len(round_trip_failures(tokenizer, texts)),
    )


def efficiency_table(
    tokenizers: Mapping[str, Any],
    texts_by_type: Mapping[str, Sequence[str]],
    baseline: str = "base",
) -> pd.DataFrame:
    """One row per tokenizer × text type; ``ratio_vs_base`` > 1 means fewer tokens than the base."""
    rows = []
    for text_type, texts in texts_by_type.items():
        if not texts:
            continue
        results = {name: measure(tok, texts) for name, tok in tokenizers.items()}
        base_tokens = results[baseline].tokens
        for name, result in results.items():
            rows.append(
                {
                    "tokenizer": name,
                    "text_type": text_type,
                    "texts": result.texts,
                    "chars": result.chars,
                    "tokens": result.tokens,
                    "tokens_per_char": round(result.tokens_per_char, 4),
                    "tokens_per_word": round(result.tokens_per_word, 4),
                    "ratio_vs_base": round(base_tokens / max(result.tokens, 1), 4),
                    "round_trip_failures": result.round_trip_failures,
                }
            )
    return pd.DataFrame(rows)


def mcq_eval_texts(records: Sequence[Mapping[str, Any]], is_special: Any) -> dict[str, list[str]]:
    """Held-out MCQ text split by type: question sentences, option terms, symbol snippets."""
    questions = [r["question"] for r in records if isinstance(r.get("question"), str)]
    options = [
        r[f]
        for r in records
        for f in MCQ_OPTION_FIELDS
        if isinstance(r.get(f), str) and r[f].strip()
    ]
    snippets = []
    for text in questions + options:
        for pos, ch in enumerate(text):
            if is_special(ch):
                snippets.append(text[max(pos - SYMBOL_CONTEXT, 0) : pos + SYMBOL_CONTEXT + 1])
    return {"exam_sentences": questions, "medical_terms": options, "medical_symbols": snippets}


def budget_curves(
    base: Any,
    variants: dict[str, pd.DataFrame],
    order_prototype: list[str],
    exam: list[str],
    budgets: list[int],
) -> pd.DataFrame:
    """Compression of held-out exam text at each budget: every variant's own order vs the prototype's."""
    base_tokens = sum(count_tokens(base, exam))
    rows = []
    for budget in budgets:
        if budget <= len(order_prototype):
            prototype = tokenizer_with_added(base, order_prototype[:budget])
            rows.append(
                {
                    "curve": "prototype (bare, by frequency)",
                    "budget": budget,
                    "ratio_vs_base": base_tokens / sum(count_tokens(prototype, exam)),
                }
            )
        for variant, table in variants.items():
            if budget > len(table):
                continue
            ordered = table.sort_values(["rank", "id"])["token"].tolist()[:budget]
            backend = tokenizer_with_added(base, ordered)
            rows.append(
                {
                    "curve": f"{variant} (savings, ▁ forms)",
                    "budget": budget,
                    "ratio_vs_base": base_tokens / sum(count_tokens(backend, exam)),
                }
            )
    return pd.DataFrame(rows)
