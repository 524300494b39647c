"""Initial embeddings for new token rows: six strategies, vectorised, tie-aware.

Every strategy that averages base rows (``subtoken_mean``, ``description_mean``, ``hybrid``) is one
``embedding_bag`` call over a flat index list: batch-encode all sources with the base tokenizer,
then average, with no Python loop over the model. Gemma ties its output projection to the input
embeddings, so writing the input rows also sets the output rows; an untied model gets its output
rows initialised the same way from its own output matrix, never left random.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medtok_dagster.core.text import WORD_BOUNDARY

STRATEGIES = ("zero", "random", "mean", "subtoken_mean", "description_mean", "hybrid")
DESCRIPTION_FIRST_SOURCES = ("dictionary", "user", "special_char", "tier1")
DESCRIPTION_FIRST_METHODS = ("exact", "morpheme", "fragment", "llm")


@dataclass(frozen=True)
class NewToken:
    """A new row to initialise: token string, id, tier source, and its English description."""

    token: str
    token_id: int
    source: str
    description: str = ""
    description_method: str = ""


@dataclass
class InitPlan:
    """For each new row, the method used and the base ids averaged (empty for zero/random/mean)."""

    token_ids: list[int]
    methods: list[str]
    sources: list[list[int]]

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.methods))


def _encode(base_tokenizer: Any, texts: Sequence[str], base_len: int) -> list[list[int]]:
    """Base ids of each text (batched in Rust); only ids below ``base_len`` are kept."""
    if not texts:
        return []
    encodings = base_tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [[i for i in e.ids if i < base_len] for e in encodings]


def _subtoken_texts(tokens: Sequence[NewToken]) -> list[str]:
    """The token's own string as the base tokenizer sees it (``▁`` back to a space)."""
    return [t.token.replace(WORD_BOUNDARY, " ") for t in tokens]


def plan_init(
    tokens: Sequence[NewToken], strategy: str, base_tokenizer: Any, base_len: int
) -> InitPlan:
    """Decide every row's method and source ids; the fallback for an empty source is ``mean``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown init strategy {strategy!r}; choose one of {STRATEGIES}")
    ids = [t.token_id for t in tokens]
    if strategy in ("zero", "random", "mean"):
        return InitPlan(ids, [strategy] * len(tokens), [[] for _ in tokens])
    subtokens = _encode(base_tokenizer, _subtoken_texts(tokens), base_len)
    described = _encode(base_tokenizer, [t.description for t in tokens], base_len)
    methods, sources = [], []
    for token, sub, desc in zip(tokens, subtokens, described):
        if strategy == "subtoken_mean":
            choice = [("subtoken_mean", sub)]
        elif strategy == "description_mean":
            choice = [("description_mean", desc)]
        else:
            prefer_description = (
                token.source in DESCRIPTION_FIRST_SOURCES
                or token.description_method in DESCRIPTION_FIRST_METHODS
            )
            choice = (
                [("description_mean", desc), ("subtoken_mean", sub)]
                if prefer_description
                else [("subtoken_mean", sub), ("description_mean", desc)]
            )
        method, source = next(((m, s) for m, s in choice if s), ("mean", []))
        methods.append(method)
        sources.append(source)
    return InitPlan(ids, methods, sources)


def _rows(
    matrix: torch.Tensor, plan: InitPlan, base_len: int, generator: torch.Generator
) -> torch.Tensor:
    """New rows for one matrix (input or untied output embeddings), computed in one pass.

    Everything is made on the matrix's device (a GPU when the base was loaded there): the index
    lists go there, and random rows are drawn on the CPU generator (the same rows on every device)
    and then moved. Indexed writes are ``index_copy_``/``index_fill_``, which insist on one device.
    """
    device = matrix.device
    base = matrix.narrow(0, 0, base_len).float()
    rows = base.mean(dim=0).expand(len(plan.token_ids), -1).clone()
    bag_rows = [i for i, s in enumerate(plan.sources) if s]
    if bag_rows:
        flat = torch.tensor(
            [idx for i in bag_rows for idx in plan.sources[i]], dtype=torch.long, device=device
        )
        lengths = torch.tensor(
            [len(plan.sources[i]) for i in bag_rows], dtype=torch.long, device=device
        )
        offsets = torch.cumsum(lengths, 0) - lengths
        bags = torch.nn.functional.embedding_bag(flat, base, offsets, mode="mean")
        rows.index_copy_(0, _positions(bag_rows, device), bags)
    zero = [i for i, m in enumerate(plan.methods) if m == "zero"]
    if zero:
        rows.index_fill_(0, _positions(zero, device), 0.0)
    random_rows = [i for i, m in enumerate(plan.methods) if m == "random"]
    if random_rows:
        noise = torch.randn(len(random_rows), base.shape[1], generator=generator).to(device)
        rows.index_copy_(0, _positions(random_rows, device), noise * base.std())
    return rows.to(matrix.dtype)


def _positions(indices: Sequence[int], device: torch.device) -> torch.Tensor:
    """Row indices as a long tensor on ``device`` (indexed ops refuse an index on another device)."""
    return torch.tensor(list(indices), dtype=torch.long, device=device)


def embeddings_tied(model: Any) -> bool:
    """True if the output projection shares storage with the input embeddings."""
    output = model.get_output_embeddings()
    return (
        output is not None
        and output.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    )


def resize_for(model: Any, new_len: int) -> int:
    """Grow the embedding matrix to hold ``new_len`` ids (never shrink: MedGemma pads to 262,208)."""
    rows = max(new_len, model.get_input_embeddings().weight.shape[0])
    model.resize_token_embeddings(rows, mean_resizing=False)
    return rows


@torch.no_grad()
def apply_init(model: Any, plan: InitPlan, base_len: int, seed: int = 0) -> dict[str, Any]:
    """Write the planned rows into the input (and, if untied, output) embeddings, on their device."""
    generator = torch.Generator().manual_seed(seed)
    tied = embeddings_tied(model)
    embedding = model.get_input_embeddings().weight
    embedding.index_copy_(
        0, _positions(plan.token_ids, embedding.device), _rows(embedding, plan, base_len, generator)
    )
    if not tied and model.get_output_embeddings() is not None:
        output = model.get_output_embeddings().weight
        output.index_copy_(
            0, _positions(plan.token_ids, output.device), _rows(output, plan, base_len, generator)
        )
    return {"tied": tied, "methods": plan.counts(), "rows": len(plan.token_ids)}


@torch.no_grad()
def apply_init_loop(
    model: Any, tokens: Sequence[NewToken], base_tokenizer: Any, base_len: int
) -> None:
    """The prototype's per-token loop (description mean, mean fallback): the benchmark baseline only."""
    embedding = model.get_input_embeddings().weight
    mean = embedding[:base_len].mean(dim=0)
    for token in tokens:
        ids = [
            i
            for i in base_tokenizer.encode(token.description, add_special_tokens=False)
            if i < base_len
        ]
        embedding[token.token_id] = embedding[ids].mean(dim=0) if ids else mean
