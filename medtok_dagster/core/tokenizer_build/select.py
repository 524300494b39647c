"""Savings-driven selection: candidate forms, the lazy greedy over a vocabulary budget, and a variant's plan."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medtok_dagster.core.text import WORD_BOUNDARY, has_hangul
from medtok_dagster.core.tokenizer_build.simulate import (
    AddedTokenSim,
    BasePieces,
    BpeMergeSim,
    MergeRule,
    Simulator,
    make_simulator,
)

SENTENCE_MARKS = (".", "?", ",")
MAX_FORM_CHARS = 16


def forms_of(surface: str) -> tuple[str, str]:
    """The bare and the word-initial (``▁``) form of a candidate surface string."""
    bare = surface.removeprefix(WORD_BOUNDARY)
    return bare, WORD_BOUNDARY + bare


def selectable_forms(candidate: Candidate) -> list[str]:
    """Every form the greedy may pick for a candidate.

    Besides the bare and ``▁`` forms, a Hangul word may carry the sentence punctuation it nearly
    always has in exam text (``▁왔다.``, ``▁진단은?``): Gemma spends a separate token on it, and
    measured savings decide whether the longer form is worth a vocabulary slot.
    """
    bare, initial = forms_of(candidate.surface)
    forms = [bare, initial]
    if has_hangul(bare[-1:]):
        forms += [form + mark for form in (bare, initial) for mark in SENTENCE_MARKS]
    return forms


@dataclass
class Choice:
    """One accepted form in greedy order, with its measured marginal gain on the training units."""

    form: str
    surface: str
    source: str
    gain: float
    entries: list[str]


@dataclass
class Selection:
    """The outcome of greedy selection: accepted forms in order and the budget curve."""

    choices: list[Choice] = field(default_factory=list)
    base_tokens: float = 0.0
    skipped_in_base: int = 0

    @property
    def new_entries(self) -> list[str]:
        return [entry for choice in self.choices for entry in choice.entries]

    def curve(self) -> pd.DataFrame:
        """Cumulative estimated savings against the number of new vocabulary entries."""
        rows, used, saved = [], 0, 0.0
        for choice in self.choices:
            used += len(choice.entries)
            saved += choice.gain
            rows.append(
                {
                    "entries": used,
                    "saved_tokens": saved,
                    "estimated_ratio": self.base_tokens / max(self.base_tokens - saved, 1.0),
                }
            )
        return pd.DataFrame(rows, columns=["entries", "saved_tokens", "estimated_ratio"])


class UnitIndex:
    """Which units contain which candidate forms, and each unit's current cost."""

    def __init__(self, units: Counter[str], forms: Iterable[str], sim: Simulator):
        self.units = list(units)
        self.freq = [units[u] for u in self.units]
        self.cost = [sim.cost(u) for u in self.units]
        form_set = set(forms)
        self.containing: dict[str, list[int]] = {f: [] for f in form_set}
        for idx, unit in enumerate(self.units):
            for piece in _substrings(unit, form_set):
                self.containing[piece].append(idx)

    def total(self) -> float:
        return float(sum(f * c for f, c in zip(self.freq, self.cost)))

    def gain(self, form: str, sim: Simulator) -> float:
        """Tokens saved on the corpus if ``form`` were accepted now."""
        affected = {i for string in sim.related(form) for i in self.containing.get(string, ())}
        return float(
            sum(
                self.freq[i] * (self.cost[i] - sim.cost(self.units[i], extra=form))
                for i in affected
            )
        )

    def refresh(self, affected: Iterable[int], sim: Simulator) -> None:
        for i in affected:
            self.cost[i] = sim.cost(self.units[i])


def _substrings(unit: str, wanted: set[str]) -> set[str]:
    found = set()
    n = len(unit)
    for i in range(n):
        for j in range(i + 2, min(n, i + MAX_FORM_CHARS) + 1):
            if unit[i:j] in wanted:
                found.add(unit[i:j])
    return found


@dataclass(frozen=True)
class Candidate:
    """A surface string offered for selection with its origin tier."""

    surface: str
    source: str


def candidate_forms(
    candidates: Sequence[Candidate], base_vocab: dict[str, int], taken: set[str]
) -> tuple[dict[str, Candidate], int]:
    """Both forms of each candidate, minus strings already in the base vocabulary or already taken.

    Returns the form → candidate map and how many forms were dropped because the base has them
    (re-adding a base string breaks the merges that produce it).
    """
    forms: dict[str, Candidate] = {}
    in_base = 0
    for candidate in candidates:
        for form in selectable_forms(candidate):
            if form in base_vocab:
                in_base += 1
            elif (
                form not in taken
                and form not in forms
                and (has_hangul(form) or candidate.source == "notation")
            ):
                forms[form] = candidate
    return forms, in_base


def greedy_select(
    candidates: Sequence[Candidate],
    units: Counter[str],
    sim: Simulator,
    budget: int,
    forced: Sequence[Candidate] = (),
    progress: Callable[[int, int], None] | None = None,
    taken: Iterable[str] = (),
) -> Selection:
    """Greedy by measured gain per vocabulary entry; ``forced`` word-initial forms are always included.

    Forced candidates (refined dictionary terms) compete in the same greedy, so the valuable ones are
    accepted early, and budget is reserved for the rest, which are appended at the end. Their bare
    form competes like any other. Stale heap priorities are re-measured before acceptance (the CELF
    trick), which is exact for diminishing returns and keeps re-simulations close to the budget.

    ``taken`` are strings the tokenizer gets anyway (Tier-1 tokens): no form may add one of them
    again, neither as itself nor as an intermediate entry of a ``bpe_merge`` merge tree, so a
    string shared by Tier 1 and a candidate tier is one vocabulary entry, not two.
    """
    taken = set(taken)
    forms, in_base = candidate_forms([*forced, *candidates], sim.base.vocab, taken)
    index = UnitIndex(units, {r for form in forms for r in sim.related(form)}, sim)
    selection = Selection(base_tokens=index.total(), skipped_in_base=in_base)
    pending = {forms_of(c.surface)[1]: c for c in forced if forms_of(c.surface)[1] in forms}
    used = 0
    heap = []
    for form in forms:
        cost = sim.vocab_cost(form)
        gain = index.gain(form, sim)
        if gain > 0 and cost > 0:
            heap.append((-gain / cost, form))
    heapq.heapify(heap)
    while heap and used + len(pending) < budget:
        _, form = heapq.heappop(heap)
        cost = sim.vocab_cost(form)
        if (
            cost == 0
            or cost > budget - used - len(pending) + (form in pending)
            or _recreates(form, sim, taken)
        ):
            continue
        gain = index.gain(form, sim)
        if gain <= 0:
            continue
        if heap and gain / cost < -heap[0][0]:
            heapq.heappush(heap, (-gain / cost, form))
            continue
        pending.pop(form, None)
        used += _accept(selection, index, sim, form, forms[form], gain)
        if progress and len(selection.choices) % 500 == 0:
            progress(used, budget)
    for form, candidate in pending.items():
        cost = sim.vocab_cost(form)
        if 0 < cost <= budget - used and not _recreates(form, sim, taken):
            used += _accept(selection, index, sim, form, candidate, index.gain(form, sim))
    return selection


def _recreates(form: str, sim: Simulator, taken: set[str]) -> bool:
    """Whether accepting ``form`` would add a taken string as a new vocabulary entry (a duplicate)."""
    return bool(taken) and not taken.isdisjoint(sim.related(form))


def _accept(
    selection: Selection,
    index: UnitIndex,
    sim: Simulator,
    form: str,
    candidate: Candidate,
    gain: float,
) -> int:
    """Add ``form`` to the simulator, update affected unit costs, record it; returns entries used."""
    touched = sim.related(form)
    entries = sim.accept(form)
    affected = {unit for string in touched for unit in index.containing.get(string, ())}
    index.refresh(affected, sim)
    selection.choices.append(Choice(form, candidate.surface, candidate.source, gain, entries))
    return len(entries)


def tier1_added_tokens(
    tokens: Sequence[str], base_vocab: dict[str, int]
) -> tuple[list[str], list[str]]:
    """Tier-1 tokens to add verbatim, and those skipped because the base vocabulary has them.

    A space inside a structural token (``- 평가기준:``) is stored as ``▁`` so it matches Gemma's
    normalised text.
    """
    keep, skipped = [], []
    for token in tokens:
        stored = token.replace(" ", WORD_BOUNDARY)
        (skipped if stored in base_vocab else keep).append(stored)
    return keep, skipped


def isolated_savings(
    surfaces: Sequence[str], units: Counter[str], base: BasePieces
) -> pd.DataFrame:
    """Tokens each candidate would save on its own, in each form (the ``candidate_tokens`` estimate).

    This is the first round of the greedy: an upper bound on what the candidate can contribute,
    useful for ranking and inspection; selection itself re-measures against accepted tokens.
    """
    sim = AddedTokenSim(base)
    bare_forms = {s: forms_of(s) for s in surfaces}
    wanted = {f for pair in bare_forms.values() for f in pair if f not in base.vocab}
    index = UnitIndex(units, wanted, sim)
    rows = []
    for surface, (bare, initial) in bare_forms.items():
        rows.append(
            {
                "token": surface,
                "in_base_bare": bare in base.vocab,
                "in_base_word_initial": initial in base.vocab,
                "base_pieces_word_initial": len(base(initial)),
                "saved_bare": 0.0 if bare in base.vocab else index.gain(bare, sim),
                "saved_word_initial": 0.0 if initial in base.vocab else index.gain(initial, sim),
            }
        )
    frame = pd.DataFrame(rows)
    frame["estimated_saved"] = frame[["saved_bare", "saved_word_initial"]].max(axis=1)
    return frame


def prototype_order(
    tier1: Sequence[str], ordered_surfaces: Sequence[str], base_tokenizer: Any
) -> list[str]:
    """The prototype's token list for comparison: bare strings in priority order, minus single tokens.

    This reproduces its mechanism (frequency/priority order, bare forms, ``len(encode) != 1`` filter)
    on our candidates, so budget curves can be compared on equal data.
    """
    seen: set[str] = set()
    order = []
    for token in [*tier1, *ordered_surfaces]:
        if token in seen:
            continue
        seen.add(token)
        if len(base_tokenizer.encode(token, add_special_tokens=False)) != 1:
            order.append(token)
    return order


@dataclass
class VariantPlan:
    """Everything a variant tokenizer is built from: Tier-1 tokens kept/skipped, selection, merges."""

    strategy: str
    tier1: list[str]
    tier1_in_base: list[str]
    selection: Selection
    merges: list[MergeRule]


def plan_variant(
    base_tokenizer: Any,
    strategy: str,
    tier1_tokens: Sequence[str],
    forced: Sequence[Candidate],
    candidates: Sequence[Candidate],
    units: Counter[str],
    budget: int,
    progress: Callable[[int, int], None] | None = None,
) -> VariantPlan:
    """Select a variant's tokens: Tier-1 verbatim, forced dictionary terms, then greedy savings."""
    base = BasePieces(base_tokenizer)
    tier1, tier1_in_base = tier1_added_tokens(tier1_tokens, base.vocab)
    sim = make_simulator(strategy, base, tier1)
    selection = greedy_select(
        candidates,
        units,
        sim,
        max(budget - len(tier1), 0),
        forced=forced,
        progress=progress,
        taken=tier1,
    )
    merges = sim.merges if isinstance(sim, BpeMergeSim) else []
    return VariantPlan(strategy, tier1, tier1_in_base, selection, merges)


def split_tier1(
    dedicated_tokens: pd.DataFrame,
) -> tuple[list[str], dict[str, str], list[Candidate], list[Candidate]]:
    """Tier 1 by how it enters a tokenizer: verbatim (user tokens, symbols), forced (dictionary), selected (notation)."""
    fixed = dedicated_tokens[dedicated_tokens["source"].isin(["user", "special_char"])]
    forced = dedicated_tokens[dedicated_tokens["source"] == "dictionary"]
    notation = dedicated_tokens[dedicated_tokens["source"] == "notation"]
    sources = {
        token.replace(" ", WORD_BOUNDARY): source
        for token, source in zip(fixed["token"], fixed["source"])
    }
    return (
        fixed["token"].tolist(),
        sources,
        [Candidate(t, "dictionary") for t in forced["token"]],
        [Candidate(t, "notation") for t in notation["token"]],
    )
