"""What a tokenizer would do with a vocabulary it does not have yet: corpus units, and the real base BPE simulated with added tokens or appended merges."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from medtok_dagster.core.text import WORD_BOUNDARY

STRATEGIES = ("added_tokens", "bpe_merge")


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


def make_simulator(strategy: str, base: BasePieces, fixed_tokens: Iterable[str]) -> Simulator:
    """The cost model for a strategy; Tier-1 tokens are added tokens under both strategies."""
    if strategy == "added_tokens":
        return AddedTokenSim(base, fixed_tokens)
    if strategy == "bpe_merge":
        return BpeMergeSim(base)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")


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


def training_units(
    medical: Iterable[str], general: Iterable[str] | None, medical_share: float
) -> Counter[str]:
    """Word units and counts a variant's selection is measured on: medical, mixed with general if given."""
    units = unit_frequencies(medical)
    if general is None:
        return units
    return mix_units(units, unit_frequencies(general), medical_share)
