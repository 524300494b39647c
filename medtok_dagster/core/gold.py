"""Gold-set scoring of token descriptions by key-concept match.

The gold set (``data/03_eval/token_gold.jsonl``) has one real new token per line with a category,
an English gloss written by an annotator, and ``key``: the concepts a correct description must
name, each a list of acceptable phrasings (``[["diabetic", "diabetes"], ["nephropathy"]]``).

The judging rule, the same for every describer:

* A phrasing matches when its words occur consecutively among the description's words, both
  lower-cased, letters and digits only, and reduced to a light stem (-ies to -y, or one of -ation,
  -ate, -ment, -ing, -ed, -es, -s, -ly off and then a final -e): performing matches perform,
  caseation matches caseating. Nothing else is fuzzy: synonyms must be listed in the key.
* **correct**: every key concept is matched.
* **vague**: some but not all concepts are matched, or none is and the description claims no
  meaning (the generic fallback or a bare loanword romanisation).
* **wrong**: no concept is matched although the description claims a meaning.

The generic share (descriptions that are the fallback) is reported beside the three verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medtok_dagster.core.descriptions import NO_CLAIM_METHODS, Description
from medtok_dagster.core.io import read_jsonl

VERDICTS = ("correct", "vague", "wrong")
MAX_WRONG = 0.03
"""The target: at most 3 % of gold tokens described wrongly (and at least 85 % correctly)."""
GOLD_FIELDS = ("token", "category", "gloss", "key")
WORD_RE = re.compile(r"[a-z0-9]+")
STEM_SUFFIXES = (
    "ations",
    "ation",
    "ating",
    "ated",
    "ates",
    "ate",
    "ments",
    "ment",
    "ings",
    "ing",
    "ed",
    "es",
    "s",
    "ly",
)


@dataclass(frozen=True)
class GoldToken:
    """One annotated token: what it means and which concepts a description must name."""

    token: str
    category: str
    gloss: str
    key: tuple[tuple[str, ...], ...]
    variant: str = ""


@dataclass(frozen=True)
class GoldScore:
    """Verdict counts over the gold tokens a describer was scored on."""

    tokens: int
    correct: int
    vague: int
    wrong: int
    generic: int

    def shares(self) -> dict[str, float]:
        """Correct, vague, wrong and generic as shares of the scored tokens (rounded to 0.001)."""
        total = max(self.tokens, 1)
        counts = {
            "correct": self.correct,
            "vague": self.vague,
            "wrong": self.wrong,
            "generic": self.generic,
        }
        return {name: round(count / total, 3) for name, count in counts.items()}

    def as_dict(self) -> dict[str, float]:
        return {"tokens": self.tokens, **self.shares()}


def read_gold(path: Path) -> list[GoldToken]:
    """The gold set; a malformed line is an error (the set is small and hand-written)."""
    records, _ = read_jsonl(path, GOLD_FIELDS)
    return [
        GoldToken(
            r.data["token"],
            r.data["category"],
            r.data["gloss"],
            tuple(tuple(phrasing) for phrasing in r.data["key"]),
            r.data.get("variant", ""),
        )
        for r in records
    ]


def light_stem(word: str) -> str:
    """``performing`` → ``perform``, ``caseation`` → ``case``: one suffix off, then a final e."""
    if word.endswith("ies") and len(word) > 5:
        return word[:-3] + "y"
    for suffix in STEM_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 4 else word


def _words(text: str) -> list[str]:
    return [light_stem(w) for w in WORD_RE.findall(text.lower())]


def mentions(description: str, phrasing: str) -> bool:
    """True if the phrasing's words occur consecutively in the description."""
    haystack, needle = _words(description), _words(phrasing)
    return bool(needle) and any(
        haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1)
    )


def judge(description: Description, gold: GoldToken) -> str:
    """``correct``, ``vague`` or ``wrong`` by the key-concept rule in the module docstring."""
    matched = sum(
        any(mentions(description.description, p) for p in concept) for concept in gold.key
    )
    if matched == len(gold.key):
        return "correct"
    if matched or description.method in NO_CLAIM_METHODS:
        return "vague"
    return "wrong"


def score(descriptions: Mapping[str, Description], gold: Sequence[GoldToken]) -> GoldScore:
    """Score the gold tokens that have a description (by token string)."""
    judged = [
        (descriptions[g.token], judge(descriptions[g.token], g))
        for g in gold
        if g.token in descriptions
    ]
    return GoldScore(
        tokens=len(judged),
        correct=sum(v == "correct" for _, v in judged),
        vague=sum(v == "vague" for _, v in judged),
        wrong=sum(v == "wrong" for _, v in judged),
        generic=sum(d.method == "generic" for d, _ in judged),
    )


def score_by(
    descriptions: Mapping[str, Description],
    gold: Sequence[GoldToken],
    group: Callable[[GoldToken], str],
) -> dict[str, GoldScore]:
    """One score per group of gold tokens (by category, by the method that described them, ...)."""
    groups: dict[str, list[GoldToken]] = {}
    for g in gold:
        groups.setdefault(group(g), []).append(g)
    return {name: score(descriptions, members) for name, members in sorted(groups.items())}


def improves(before: GoldScore, after: GoldScore, max_wrong: float = MAX_WRONG) -> bool:
    """True if ``after`` describes a larger share correctly and stays within the wrong target.

    This decides whether LLM descriptions may replace generic rule-based ones: compared on the
    same gold tokens, the combination must be right more often without being wrong too often.
    """
    return (
        after.shares()["correct"] > before.shares()["correct"]
        and after.shares()["wrong"] <= max_wrong
    )
