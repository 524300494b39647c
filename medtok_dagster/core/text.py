"""Korean text primitives shared by every stage: normalisation, Hangul classes, MCQ text, shingles.

Everything that compares strings across stages (corpus, candidates, contamination) goes through
:func:`normalize` so that NFC/NFD differences between sources never make two equal words differ.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

HANGUL_SYLLABLES = "\uac00-\ud7a3"
HANGUL_JAMO = "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\ud7b0-\ud7ff"
HANGUL_RE = re.compile(f"[{HANGUL_SYLLABLES}{HANGUL_JAMO}]")
HANGUL_RUN_RE = re.compile(f"[{HANGUL_SYLLABLES}]+")
PURE_HANGUL_RE = re.compile(f"^[{HANGUL_SYLLABLES}]+$")
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?。])\s+|\n+")
MCQ_OPTION_FIELDS = ("A", "B", "C", "D", "E")
MCQ_TEXT_FIELDS = ("question", *MCQ_OPTION_FIELDS)
WORD_BOUNDARY = "\u2581"


def normalize(text: str) -> str:
    """NFC-normalise and collapse runs of whitespace to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def has_hangul(text: str) -> bool:
    """True if any Hangul syllable or jamo occurs in ``text``."""
    return HANGUL_RE.search(text) is not None


def is_pure_hangul(text: str) -> bool:
    """True if ``text`` is one or more Hangul syllables and nothing else."""
    return PURE_HANGUL_RE.match(text) is not None


def hangul_runs(text: str) -> list[str]:
    """Maximal runs of Hangul syllables, the units n-gram candidates are cut from."""
    return HANGUL_RUN_RE.findall(text)


def split_sentences(text: str) -> list[str]:
    """Split on sentence punctuation and newlines; keeps Korean sentences whole."""
    return [part for part in (normalize(p) for p in SENTENCE_SPLIT_RE.split(text)) if part]


def mcq_texts(
    record: Mapping[str, Any], fields: Iterable[str] = MCQ_TEXT_FIELDS
) -> Iterator[tuple[str, str]]:
    """Yield ``(field, text)`` for the text fields of a KorMedMCQA record that are present."""
    for name in fields:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            yield name, value


def shingle_key(text: str) -> str:
    """Canonical form for overlap tests: NFC, case-folded, with whitespace and punctuation removed.

    Removing spacing makes the test robust to re-spacing of Korean text, which is common between
    exam PDFs and their transcriptions.
    """
    folded = unicodedata.normalize("NFC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def shingles(text: str, size: int = 8) -> set[str]:
    """The set of ``size``-character shingles of :func:`shingle_key` (the whole key if shorter)."""
    key = shingle_key(text)
    if len(key) <= size:
        return {key} if key else set()
    return {key[i : i + size] for i in range(len(key) - size + 1)}


@dataclass(frozen=True)
class Leak:
    """A held-out question whose shingles were found in vocabulary-building text."""

    question_id: str
    overlap: float
    example_shingle: str


def find_leaks(
    held_out: Mapping[str, str],
    training_texts: Iterable[str],
    size: int = 8,
    threshold: float = 0.5,
) -> tuple[list[Leak], int]:
    """Report held-out questions with at least ``threshold`` of their shingles in the training texts.

    Only the held-out shingles are kept in memory (tens of thousands), and the training texts are
    streamed once, so this scales to corpus samples of millions of lines. A threshold (rather than
    "any shared shingle") is needed because exam stems such as "다음 중 가장 적절한 것은" legitimately
    recur across years. Returns the leaks, worst first, and the number of training texts scanned.
    """
    question_shingles = {qid: shingles(text, size) for qid, text in held_out.items()}
    wanted = set().union(*question_shingles.values()) if question_shingles else set()
    seen: set[str] = set()
    scanned = 0
    for text in training_texts:
        scanned += 1
        key = shingle_key(text)
        for i in range(max(len(key) - size + 1, 1)):
            piece = key[i : i + size]
            if piece in wanted:
                seen.add(piece)
    leaks = []
    for qid, pieces in question_shingles.items():
        if not pieces:
            continue
        found = pieces & seen
        overlap = len(found) / len(pieces)
        if overlap >= threshold:
            leaks.append(Leak(qid, overlap, min(found)))
    leaks.sort(key=lambda leak: (-leak.overlap, leak.question_id))
    return leaks, scanned
