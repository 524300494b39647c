"""Writing the chosen tokens: a `save_pretrained` tokenizer (added tokens or BPE merges), its token table and token mapping."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medtok_dagster.core.base_model import load_local_tokenizer
from medtok_dagster.core.text import WORD_BOUNDARY
from medtok_dagster.core.tokenizer_build.select import Selection, VariantPlan
from medtok_dagster.core.tokenizer_build.simulate import MergeRule


def _bpe_merge_tokenizer_json(
    base_json: str, merges: Sequence[MergeRule], entries: Sequence[str], first_id: int
) -> str:
    data = json.loads(base_json)
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(
            f"bpe_merge needs a BPE tokenizer model, got {model.get('type')!r}; use added_tokens"
        )
    vocab = model["vocab"]
    for offset, entry in enumerate(entries):
        vocab[entry] = first_id + offset
    pair_as_list = bool(model["merges"]) and isinstance(model["merges"][0], list)
    model["merges"].extend(
        [[m.left, m.right] if pair_as_list else f"{m.left} {m.right}" for m in merges]
    )
    return json.dumps(data, ensure_ascii=False)


def build_extended_tokenizer(
    base_tokenizer: Any,
    strategy: str,
    tier1: Sequence[str],
    selection: Selection,
    merges: Sequence[MergeRule],
    out_dir: Path,
) -> Any:
    """Write an extended tokenizer to ``out_dir`` (a staging directory) and return it reloaded.

    New ids start at ``len(base_tokenizer)``, so on MedGemma (whose ``<image_soft_token>`` is 262144)
    the first new id is 262145, and on plain Gemma 3 it is 262144.
    """
    from tokenizers import AddedToken

    first_id = len(base_tokenizer)
    base_tokenizer.save_pretrained(out_dir)
    if strategy == "bpe_merge":
        tokenizer_json = out_dir / "tokenizer.json"
        tokenizer_json.write_text(
            _bpe_merge_tokenizer_json(
                base_tokenizer.backend_tokenizer.to_str(), merges, selection.new_entries, first_id
            ),
            encoding="utf-8",
        )
        for stale in ("tokenizer.model",):
            (out_dir / stale).unlink(missing_ok=True)
    tokenizer = load_local_tokenizer(out_dir)
    added = list(tier1) + (selection.new_entries if strategy == "added_tokens" else [])
    tokenizer.add_tokens([AddedToken(token, normalized=True, special=False) for token in added])
    tokenizer.save_pretrained(out_dir)
    return load_local_tokenizer(out_dir)


def new_token_ids(tokenizer: Any, base_len: int) -> dict[str, int]:
    """Every token with id ≥ ``base_len`` (added tokens and new BPE entries alike)."""
    return {
        token: idx
        for token, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        if idx >= base_len
    }


def tokenizer_with_added(base_tokenizer: Any, tokens: Sequence[str]) -> Any:
    """An in-memory copy of the base backend with ``tokens`` added (for budget-curve measurements)."""
    from tokenizers import AddedToken, Tokenizer

    backend = Tokenizer.from_str(base_tokenizer.backend_tokenizer.to_str())
    backend.add_tokens([AddedToken(t, normalized=True, special=False) for t in tokens])
    return backend


def token_table(plan: VariantPlan, tokenizer: Any, tier1_sources: dict[str, str]) -> pd.DataFrame:
    """One row per new vocabulary entry with id, tier, form, kind and measured savings."""
    vocab = tokenizer.get_vocab()
    rows = []
    for token in plan.tier1:
        rows.append(
            {
                "token": token,
                "surface": token,
                "id": vocab[token],
                "source": tier1_sources.get(token, "tier1"),
                "kind": "tier1",
                "saved_tokens": 0.0,
                "rank": 0,
            }
        )
    for rank, choice in enumerate(plan.selection.choices, start=1):
        for entry in choice.entries:
            is_final = entry == choice.form
            rows.append(
                {
                    "token": entry,
                    "surface": entry.removeprefix(WORD_BOUNDARY),
                    "id": vocab[entry],
                    "source": choice.source,
                    "kind": ("word_initial" if entry.startswith(WORD_BOUNDARY) else "bare")
                    if is_final
                    else "intermediate",
                    "saved_tokens": choice.gain if is_final else 0.0,
                    "rank": rank,
                }
            )
    return pd.DataFrame(
        rows, columns=["token", "surface", "id", "source", "kind", "saved_tokens", "rank"]
    ).sort_values("id", ignore_index=True)


def token_mapping(base_len: int, tokenizer: Any, strategy: str) -> dict[str, Any]:
    """The prototype's ``token_mapping.json`` content (plus the strategy)."""
    ids = new_token_ids(tokenizer, base_len)
    return {
        "original_vocab_size": base_len,
        "new_vocab_size": len(tokenizer),
        "tokens_added": len(ids),
        "strategy": strategy,
        "new_tokens": list(ids),
        "new_token_ids": ids,
    }
