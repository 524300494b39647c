"""The medical corpus: train-split questions, options and dictionary entries as deduplicated Korean sentences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medtok_dagster.core.text import (
    has_hangul,
    mcq_texts,
    split_sentences,
)


def build_medical_corpus(
    records: Sequence[Mapping[str, Any]], dictionary_entries: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """``(source, sentence)`` rows of Korean medical text: train questions, options, dictionary definitions.

    Sentences are NFC-normalised and deduplicated (first occurrence wins); rows without Hangul are
    dropped because they cannot teach Korean pieces. Only the train split is ever passed in.
    """
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []

    def add(source: str, text: str) -> None:
        for sentence in split_sentences(text):
            if sentence not in seen and has_hangul(sentence):
                seen.add(sentence)
                rows.append((source, sentence))

    for record in records:
        for field_name, text in mcq_texts(record):
            add("mcq_question" if field_name == "question" else "mcq_option", text)
    for term, definition in dictionary_entries:
        add("dictionary_definition", definition)
        add("dictionary_term", term)
    return rows
