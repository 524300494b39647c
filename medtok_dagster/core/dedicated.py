"""Tier 1: dedicated tokens (special characters from the train split, user structural tokens).

Special characters are the non-ASCII, non-Hangul symbols of exam text (≥, ℃, μ, →, ±, …). Gemma
often spends several byte-fallback tokens on them, so each frequent one becomes its own token.
Only the train split is scanned: the test split must never shape the vocabulary.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medtok_dagster.core.io import InputError, JsonlRecord, SkipReport, iter_text_lines
from medtok_dagster.core.text import HANGUL_RE, MCQ_TEXT_FIELDS, mcq_texts

MCQ_REQUIRED_FIELDS = ("question", "A", "B", "C", "D", "E", "answer")
CONTEXT_CHARS = 20


def is_special_char(ch: str) -> bool:
    """A symbol worth a dedicated token: not ASCII, not Hangul, not whitespace, not a control char."""
    if ch.isascii() or ch.isspace() or HANGUL_RE.match(ch):
        return False
    return not unicodedata.category(ch).startswith("C")


@dataclass
class CharStats:
    """Running count of one special character and where it was first seen."""

    char: str
    count: int = 0
    example: dict[str, object] = field(default_factory=dict)


def scan_special_chars(
    records: Iterable[JsonlRecord],
    source_name: str,
    fields: Sequence[str] = (*MCQ_TEXT_FIELDS, "cot"),
) -> dict:
    """Count special characters in MCQ records and build the prototype's report structure.

    The report keeps, per character, its code point, count, and the first occurrence with a
    ±20-character context, so a reviewer can see why a symbol was added.
    """
    stats: dict[str, CharStats] = {}
    for record in records:
        for field_name, text in mcq_texts(record.data, fields):
            for pos, ch in enumerate(text):
                if not is_special_char(ch):
                    continue
                entry = stats.setdefault(ch, CharStats(ch))
                entry.count += 1
                if not entry.example:
                    entry.example = {
                        "line": record.line,
                        "field": field_name,
                        "context": text[max(pos - CONTEXT_CHARS, 0) : pos + CONTEXT_CHARS + 1],
                        "code": ord(ch),
                        "unicode": f"U+{ord(ch):04X}",
                        "file": source_name,
                    }
    ordered = sorted(stats.values(), key=lambda s: (-s.count, s.char))
    return {
        "total_unique": len(ordered),
        "total_occurrences": sum(s.count for s in ordered),
        "characters": [
            {
                "char": s.char,
                "code": ord(s.char),
                "unicode": f"U+{ord(s.char):04X}",
                "name": unicodedata.name(s.char, ""),
                "count": s.count,
                "example": s.example,
            }
            for s in ordered
        ],
    }


def special_chars_frame(report: dict) -> pd.DataFrame:
    """The report as one row per character (for the DuckDB table)."""
    rows = [
        {
            "char": c["char"],
            "code": c["code"],
            "unicode": c["unicode"],
            "name": c["name"],
            "count": c["count"],
            "example_line": c["example"]["line"],
            "example_field": c["example"]["field"],
            "example_context": c["example"]["context"],
        }
        for c in report["characters"]
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "char",
            "code",
            "unicode",
            "name",
            "count",
            "example_line",
            "example_field",
            "example_context",
        ],
    )


def load_user_tokens(path: Path, lenient: bool = False) -> tuple[list[str], SkipReport]:
    """Read the structural tokens, one per line, keeping inner spaces (``- 평가기준:``).

    Tokens never carry newlines: the prototype found that tokens with ``\\n`` inside do not survive
    SentencePiece-style normalisation. Blank lines and repeats are counted and dropped.
    """
    skips = SkipReport()
    tokens: list[str] = []
    for line_no, text in iter_text_lines(path, lenient, skips):
        token = text.strip()
        if not token:
            skips.add("blank_line", path, line_no)
            continue
        if token in tokens:
            skips.add("duplicate", path, line_no)
            continue
        tokens.append(token)
    if not tokens:
        raise InputError(path, None, "no tokens: the file has only blank lines")
    return tokens, skips


def combine_dedicated(
    special_chars: Iterable[tuple[str, int]],
    user_tokens: Sequence[str],
    dictionary_terms: Sequence[str],
    min_count: int = 3,
    notation: Iterable[tuple[str, int]] = (),
) -> pd.DataFrame:
    """Tier 1 in priority order: user tokens, frequent special characters and unit notation, dictionary terms.

    A string that appears in several sources is kept once, under the first source, and the others
    are listed in ``also_in`` so the overlap is visible instead of silently deduplicated.
    """
    rows: dict[str, dict] = {}

    def add(token: str, source: str, count: int | None) -> None:
        if token in rows:
            rows[token]["also_in"] = ",".join(filter(None, [rows[token]["also_in"], source]))
            return
        rows[token] = {"token": token, "source": source, "count": count, "also_in": ""}

    for token in user_tokens:
        add(token, "user", None)
    for char, count in special_chars:
        if count >= min_count:
            add(char, "special_char", int(count))
    for unit, count in notation:
        if count >= min_count:
            add(unit, "notation", int(count))
    for term in dictionary_terms:
        add(term, "dictionary", None)
    frame = pd.DataFrame(list(rows.values()), columns=["token", "source", "count", "also_in"])
    frame["count"] = frame["count"].astype("Int64")
    return frame


UNIT_SEGMENT = r"(?:[A-Za-zμµ℃%]+|[가-힣])"
NOTATION_RE = re.compile(rf"(?:×10[³²⁴⁵⁶⁹]|[³²])?{UNIT_SEGMENT}?(?:/{UNIT_SEGMENT})+")


def scan_notation(
    records: Iterable[JsonlRecord], fields: Sequence[str] = MCQ_TEXT_FIELDS
) -> Counter[str]:
    """Unit notation of exam text with counts: ``mg/dL``, ``mEq/L``, ``/μL``, ``×10³/μL``, ``회/분``.

    Gemma spells these out piece by piece (``m``, ``Eq``, ``/``, ``L``) in every lab value, so the
    frequent ones are offered to selection, which decides between their bare and ``▁`` forms.
    """
    counts: Counter[str] = Counter()
    for record in records:
        for _, text in mcq_texts(record.data, fields):
            counts.update(match for match in NOTATION_RE.findall(text) if len(match) >= 2)
    return counts
