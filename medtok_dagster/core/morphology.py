"""Korean morphological analysis of new tokens with Kiwi (kiwipiepy).

A new token is a word, a word carrying particles and endings (``▁환자가``, ``정상이었다.``) or a
piece of a word. Kiwi splits it into tagged morphemes, so a description can gloss the stem and name
each particle or ending by its grammatical role instead of guessing from substrings. Kiwi's model
ships in the ``kiwipiepy-model`` wheel: analysis never downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

GRAMMAR_TAG_PREFIXES = ("J", "E", "VCP", "VCN", "XSV", "XSA", "VX")
"""Particles, endings, the copula, verb- and adjective-forming suffixes and auxiliary verbs."""
PUNCTUATION_TAGS = ("SF", "SP", "SS", "SE", "SO", "SW")
VERB_TAGS = ("VV", "VA")


@dataclass(frozen=True)
class Morph:
    """One morpheme: Kiwi's form (a verb's base form), tag, span in the text, and OOV flag."""

    form: str
    tag: str
    start: int
    end: int
    oov: bool = False

    @property
    def is_grammar(self) -> bool:
        return self.tag.startswith(GRAMMAR_TAG_PREFIXES) or self.tag in PUNCTUATION_TAGS

    @property
    def is_punctuation(self) -> bool:
        return self.tag in PUNCTUATION_TAGS


@dataclass(frozen=True)
class Analysis:
    """A token split into its stem (content morphemes) and its grammatical tail."""

    text: str
    stem: tuple[Morph, ...]
    tail: tuple[Morph, ...]

    @property
    def stem_text(self) -> str:
        """The stem as written in the token, up to where Kiwi says the last stem morpheme ends."""
        return self.text[: self.stem[-1].end] if self.stem else ""

    @property
    def is_verb(self) -> bool:
        return len(self.stem) == 1 and self.stem[0].tag.startswith(VERB_TAGS)

    @property
    def is_known_word(self) -> bool:
        """One morpheme Kiwi knows: a real word, never glossed as a piece of a longer term."""
        return len(self.stem) == 1 and not self.stem[0].oov

    @property
    def roles(self) -> tuple[Morph, ...]:
        return tuple(m for m in self.tail if not m.is_punctuation)


@lru_cache(maxsize=1)
def kiwi() -> Any:
    """The analyser, loaded once per process (about a second) from the installed model wheel."""
    from kiwipiepy import Kiwi

    return Kiwi()


@lru_cache(maxsize=65536)
def analyse(text: str) -> tuple[Morph, ...]:
    """Kiwi's best analysis of ``text`` (no spaces expected: a token without its ``▁``)."""
    if not text:
        return ()
    tokens = kiwi().analyze(text, top_n=1)[0][0]
    return tuple(Morph(t.form, t.tag.split("-")[0], t.start, t.end, bool(t.oov)) for t in tokens)


def split_token(text: str) -> Analysis:
    """Stem and tail: the tail is the longest run of grammatical morphemes at the end.

    Only the trailing particles, endings and punctuation are roles; a grammatical morpheme followed
    by more stem stays in the stem. A token that starts with an auxiliary verb (``▁왔다.``: 오)
    uses it as the main verb, since nothing precedes it to be auxiliary to.
    """
    morphs = analyse(text)
    if morphs and morphs[0].tag == "VX":
        morphs = (replace(morphs[0], tag="VV"), *morphs[1:])
    cut = len(morphs)
    while cut > 0 and morphs[cut - 1].is_grammar:
        cut -= 1
    return Analysis(text, morphs[:cut], morphs[cut:])
