"""Savings-driven token selection and the two ways of extending a Gemma tokenizer.

Why this differs from the prototype: it added bare strings picked by frequency. Gemma marks word
starts with ``▁``, so a bare ``혈당`` at a word start still costs ``▁`` + ``혈당``; and frequency ignores
how many tokens the base tokenizer already spends on a string. Here every candidate is considered in
both forms (``혈당`` and ``▁혈당``), and a lazy greedy picks, under a vocabulary budget, the form that
saves the most tokens on the training corpora *given the tokens already accepted*, so overlapping
candidates never double-count.

The corpus is reduced to *units* (whitespace-separated words, with ``▁`` on all but the first word of
a line, exactly as Gemma's normaliser sees them) and their frequencies; the cost of a unit is
simulated with the real base BPE for the pieces the new tokens do not cover.

Two strategies write the result:

* ``added_tokens`` – ``tokenizer.add_tokens`` (the prototype's mechanism, works for any HF tokenizer).
  Added tokens are matched leftmost-longest before BPE, which can split 중환자실 into 중+환자+실.
* ``bpe_merge`` – new pieces become BPE vocabulary entries with merges appended after the base
  merges, so they take part in normal BPE and never cut a word against its grain.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medtok_dagster.core.base_model import load_local_tokenizer
from medtok_dagster.core.text import WORD_BOUNDARY, has_hangul

STRATEGIES = ("added_tokens", "bpe_merge")
SENTENCE_MARKS = (".", "?", ",")
MAX_FORM_CHARS = 16


def line_units(line: str) -> list[str]:
    """Split a line the way Gemma sees it: the first word bare, every later word ``▁``-prefixed."""
    units, pending = [], ""
    for position, word in enumerate(line.split(" ")):
        if position:
            pending += WORD_BOUNDARY
        if word:
            units.append(pending + word)
            pending = ""
    return units + [pending] if pending else units


def unit_frequencies(lines: Iterable[str], weight: int = 1) -> Counter[str]:
    """Frequencies of units over a corpus (``weight`` lets a small domain corpus count more)."""
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(line_units(line))
    if weight != 1:
        for unit in counts:
            counts[unit] *= weight
    return counts


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


class BasePieces:
    """The base tokenizer's BPE on a bare string (no normaliser: units are already ``▁``-encoded).

    Results are cached: a corpus has far fewer distinct gaps than occurrences.
    """

    def __init__(self, tokenizer: Any):
        backend = tokenizer.backend_tokenizer
        self._model = backend.model
        self.vocab: dict[str, int] = tokenizer.get_vocab()
        self._cache: dict[str, tuple[str, ...]] = {}
        self._backend = backend
        self._merge_pairs: set[tuple[str, str]] | None = None

    @property
    def merge_pairs(self) -> set[tuple[str, str]]:
        """The base merges as pairs (parsed once, only when the ``bpe_merge`` strategy needs them)."""
        if self._merge_pairs is None:
            merges = json.loads(self._backend.to_str())["model"].get("merges", [])
            self._merge_pairs = {
                tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges
            }
        return self._merge_pairs

    def __call__(self, text: str) -> tuple[str, ...]:
        pieces = self._cache.get(text)
        if pieces is None:
            pieces = tuple(t.value for t in self._model.tokenize(text))
            self._cache[text] = pieces
        return pieces

    def cost(self, text: str) -> int:
        return len(self(text)) if text else 0


class AddedTokenSim:
    """Cost of a unit when new tokens are matched leftmost-longest before BPE (``added_tokens``)."""

    def __init__(self, base: BasePieces, initial: Iterable[str] = ()):
        self.base = base
        self.tokens: set[str] = set(initial)
        self.max_len = max((len(t) for t in self.tokens), default=1)

    def vocab_cost(self, form: str) -> int:
        """Vocabulary entries the form would use: one, or none if it is already added."""
        return 0 if form in self.tokens else 1

    def cost(self, unit: str, extra: str | None = None) -> int:
        tokens, max_len = self.tokens, self.max_len
        if extra is not None:
            max_len = max(max_len, len(extra))
        cost, i, gap_start, n = 0, 0, 0, len(unit)
        while i < n:
            match = 0
            for length in range(min(max_len, n - i), 0, -1):
                piece = unit[i : i + length]
                if piece in tokens or piece == extra:
                    match = length
                    break
            if match:
                cost += self.base.cost(unit[gap_start:i]) + 1
                i += match
                gap_start = i
            else:
                i += 1
        return cost + self.base.cost(unit[gap_start:])

    def related(self, form: str) -> list[str]:
        """Strings whose units change when ``form`` is accepted: only the form itself."""
        return [form]

    def accept(self, form: str) -> list[str]:
        """Add the form; returns the new vocabulary entries (the form)."""
        self.tokens.add(form)
        self.max_len = max(self.max_len, len(form))
        return [form]


@dataclass
class MergeRule:
    left: str
    right: str
    merged: str


class BpeMergeSim:
    """Cost of a unit when new pieces are BPE merges ranked after every base merge (``bpe_merge``).

    A form is reached by merging its base pieces left to right; intermediate strings that are not
    already in the vocabulary become new entries too and are charged against the budget.
    """

    def __init__(self, base: BasePieces):
        self.base = base
        self.rules: dict[tuple[str, str], int] = {}
        self.merges: list[MergeRule] = []
        self.new_entries: set[str] = set()

    def _known(self, text: str) -> bool:
        return text in self.base.vocab or text in self.new_entries

    def chain(self, form: str) -> list[MergeRule]:
        """Merges that build ``form`` from its base pieces with the fewest new vocabulary entries.

        A small interval DP picks the binary merge tree: spans that are already vocabulary entries
        (``경색`` inside ``▁심근경색``) are free, so useful intermediates are reused instead of
        creating left-to-right prefixes like ``▁심근경``. Rules that already exist are skipped.
        """
        pieces = self.base(form)
        k = len(pieces)
        if k < 2:
            return []
        text = {(i, j): "".join(pieces[i:j]) for i in range(k) for j in range(i + 1, k + 1)}
        cost: dict[tuple[int, int], int] = {(i, i + 1): 0 for i in range(k)}
        split: dict[tuple[int, int], int] = {}
        for width in range(2, k + 1):
            for i in range(k - width + 1):
                j = i + width
                best = min(
                    range(i + 1, j),
                    key=lambda m: (
                        cost[(i, m)] + cost[(m, j)],
                        -self._known(text[(i, m)]) - self._known(text[(m, j)]),
                    ),
                )
                split[(i, j)] = best
                cost[(i, j)] = (
                    cost[(i, best)] + cost[(best, j)] + (0 if self._known(text[(i, j)]) else 1)
                )
        rules: list[MergeRule] = []

        def emit(i: int, j: int) -> None:
            if j - i < 2:
                return
            m = split[(i, j)]
            emit(i, m)
            emit(m, j)
            pair = (text[(i, m)], text[(m, j)])
            if pair not in self.rules and pair not in self.base.merge_pairs:
                rules.append(MergeRule(text[(i, m)], text[(m, j)], text[(i, j)]))

        emit(0, k)
        return rules

    def vocab_cost(self, form: str) -> int:
        """New vocabulary entries the form's merge tree needs (the form and any new intermediates)."""
        return len({r.merged for r in self.chain(form) if not self._known(r.merged)})

    def _apply(self, pieces: list[str], rules: dict[tuple[str, str], int]) -> int:
        while len(pieces) > 1:
            best, best_rank = -1, math.inf
            for i in range(len(pieces) - 1):
                rank = rules.get((pieces[i], pieces[i + 1]))
                if rank is not None and rank < best_rank:
                    best, best_rank = i, rank
            if best < 0:
                break
            pieces[best : best + 2] = [pieces[best] + pieces[best + 1]]
        return len(pieces)

    def cost(self, unit: str, extra: str | None = None) -> int:
        rules = self.rules
        if extra is not None:
            rules = dict(rules)
            for offset, rule in enumerate(self.chain(extra)):
                rules[(rule.left, rule.right)] = len(self.merges) + offset
        return self._apply(list(self.base(unit)), rules)

    def related(self, form: str) -> list[str]:
        """Strings whose units change when ``form`` is accepted: every string its merges produce."""
        return [rule.merged for rule in self.chain(form)] or [form]

    def accept(self, form: str) -> list[str]:
        """Append the form's merges; returns the new vocabulary entries (form and intermediates)."""
        created = []
        for rule in self.chain(form):
            self.rules[(rule.left, rule.right)] = len(self.merges)
            self.merges.append(rule)
            if not self._known(rule.merged):
                self.new_entries.add(rule.merged)
                created.append(rule.merged)
        return created


Simulator = AddedTokenSim | BpeMergeSim


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


def make_simulator(strategy: str, base: BasePieces, fixed_tokens: Iterable[str]) -> Simulator:
    """The cost model for a strategy; Tier-1 tokens are added tokens under both strategies."""
    if strategy == "added_tokens":
        return AddedTokenSim(base, fixed_tokens)
    if strategy == "bpe_merge":
        return BpeMergeSim(base)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")


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


def mix_units(medical: Counter[str], general: Counter[str], medical_share: float) -> Counter[str]:
    """Combine unit counts so the medical corpus carries ``medical_share`` of all base tokens' weight.

    Without this, a 1M-line general sample would drown a 10k-line medical corpus and the mixed
    variant would stop improving medical text.
    """
    if not general:
        return Counter(medical)
    if not medical or medical_share <= 0:
        return Counter(general)
    scale = (medical_share / (1 - medical_share)) * (sum(general.values()) / sum(medical.values()))
    mixed: Counter[str] = Counter(general)
    for unit, count in medical.items():
        mixed[unit] += count * scale
    return mixed


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


def tokenizer_with_added(base_tokenizer: Any, tokens: Sequence[str]) -> Any:
    """An in-memory copy of the base backend with ``tokens`` added (for budget-curve measurements)."""
    from tokenizers import AddedToken, Tokenizer

    backend = Tokenizer.from_str(base_tokenizer.backend_tokenizer.to_str())
    backend.add_tokens([AddedToken(t, normalized=True, special=False) for t in tokens])
    return backend


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
