"""English descriptions for new tokens: morphology-aware glosses, review passes, validation.

A new token's embedding is initialised from the base embeddings of its English description, so a
description must be English only (Hangul would map back to the very byte pieces we are replacing),
specific (a shared "medical term" gives many tokens one embedding), correct (a wrong gloss puts the
row next to the wrong words), and free of quotes and brackets (noise tokens).

How a token is described, first rule that applies:

1. ``exact``: a symbol, unit or prompt marker, or the whole word (without ``▁`` and punctuation)
   is a dictionary term or a lexicon word.
2. ``morpheme``: Kiwi splits the token into a stem and its particles and endings; the stem is a
   known word or a real compound of known words, the tail is named by grammatical role
   (``syndrome + object particle``).
3. ``fragment``: the token is not a word (Kiwi does not know it) but the start or end of one or two
   known terms that are at most three syllables longer (``푸로세`` → ``piece of furosemide``).
4. ``loanword``: an unknown transliterated word, romanised so a reader can match it to English.
5. ``generic``: nothing is known; the description says so instead of guessing.

No rule glosses a token by a longer term that merely contains it: 혈당 is never described by
"hyperosmolar hyperglycemic state". The passes below are pure functions so each can be tested and
re-run on LLM output.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from medtok_dagster.core import lexicon
from medtok_dagster.core.morphology import Analysis, Morph, split_token
from medtok_dagster.core.text import HANGUL_RE, WORD_BOUNDARY, is_pure_hangul

METHODS = ("exact", "morpheme", "fragment", "loanword", "llm", "generic")
NO_CLAIM_METHODS = ("loanword", "generic")
"""Methods whose description makes no claim about meaning (a romanisation, the fallback)."""
REPLACEABLE_BY_LLM = ("generic",)
"""A rule-based description the LLM's may replace: only one that admits knowing nothing."""
GENERIC_DESCRIPTION = "Korean word piece"
QUOTES_RE = re.compile(r"[\"'`‘’“”]")
PARENS_RE = re.compile(r"[()\[\]{}]")
PAREN_CONTENT_RE = re.compile(r"\([^)]*\)|\[[^\]]*\]")
HANGUL_RUN_RE = re.compile(f"{HANGUL_RE.pattern}+")
LATIN_RE = re.compile(r"[A-Za-z]")
SPACES_RE = re.compile(r"\s+")
TRAILING_PUNCTUATION = ".,?!;:"
FRAGMENT_MAX_EXTRA = 3
FRAGMENT_MAX_TERMS = 2
MARKER_GLOSSES: Mapping[str, str] = {
    "평가기준": "evaluation criteria",
    "점수표": "score table",
    "근거요약": "evidence summary",
}
# fmt: off
_INITIALS = ("g", "kk", "n", "d", "tt", "r", "m", "b", "pp", "s", "ss", "", "j", "jj", "ch", "k",
             "t", "p", "h")
_MEDIALS = ("a", "ae", "ya", "yae", "eo", "e", "yeo", "ye", "o", "wa", "wae", "oe", "yo", "u", "wo",
            "we", "wi", "yu", "eu", "ui", "i")
_FINALS = ("", "k", "k", "k", "n", "n", "n", "t", "l", "k", "m", "l", "l", "l", "p", "l", "m", "p",
           "p", "t", "t", "ng", "t", "t", "k", "t", "p", "t")
# fmt: on
_EU, _SILENT_INITIAL, _RIEUL_FINAL = 18, 11, 8


@dataclass(frozen=True)
class Description:
    """One new token's description and how it was obtained."""

    token: str
    token_id: int
    description: str
    method: str


def romanize(text: str) -> str:
    """Revised Romanization of Hangul syllables (other characters dropped): English-safe context."""
    out = []
    for ch in text:
        code = ord(ch) - 0xAC00
        if 0 <= code < 11172:
            out.append(_INITIALS[code // 588] + _MEDIALS[(code % 588) // 28] + _FINALS[code % 28])
    return "".join(out)


def romanize_loanword(text: str) -> str:
    """Romanise a transliterated loanword the way English spells it back: 에스트로겐 → estrogen.

    Korean inserts the vowel ㅡ after consonant clusters and final consonants of the source word
    (스, 트, 프); it is dropped. ㄹ before ㄹ is one l, and a final 어 is read as -er (터 → ter).
    Korean has one letter for r and l, so 린 may stand for rin or lin: close enough to match by eye.
    """
    out = []
    codes = [ord(ch) - 0xAC00 for ch in text if 0 <= ord(ch) - 0xAC00 < 11172]
    for k, code in enumerate(codes):
        initial, medial, final = code // 588, (code % 588) // 28, code % 28
        onset = _INITIALS[initial]
        if k and onset == "r" and codes[k - 1] % 28 == _RIEUL_FINAL:
            onset = ""
        vowel = "" if medial == _EU and initial != _SILENT_INITIAL else _MEDIALS[medial]
        if vowel == "eo" and not final and k == len(codes) - 1:
            vowel = "er"
        out.append(onset + vowel + _FINALS[final])
    return "".join(out)


def english_gloss(definition: str) -> str:
    """The English part of a dictionary definition (``myocardial infarction; 관상동맥이 …``)."""
    for part in re.split(r"[;:.\n]", definition):
        english = HANGUL_RUN_RE.sub(" ", PAREN_CONTENT_RE.sub(" ", part))
        cleaned = SPACES_RE.sub(" ", english).strip(" ,-")
        if len(LATIN_RE.findall(cleaned)) >= 3:
            return cleaned
    return ""


def build_glossary(entries: Iterable[tuple[str, str]]) -> tuple[dict[str, str], Counter[str]]:
    """Term → English gloss; counts duplicate, empty and Hangul-only definitions (not fatal)."""
    glossary: dict[str, str] = {}
    issues: Counter[str] = Counter()
    for term, definition in entries:
        key = PARENS_RE.sub("", term).strip()
        if key in glossary:
            issues["duplicate_term"] += 1
            continue
        if not definition.strip():
            issues["empty_definition"] += 1
            continue
        gloss = english_gloss(definition)
        if not gloss:
            issues["hangul_only_definition"] += 1
            continue
        glossary[key] = gloss
    return glossary, issues


def lookup(word: str, glossary: Mapping[str, str]) -> str | None:
    """A whole word's gloss: the dictionary first (the user's domain), then the shipped lexicon."""
    return glossary.get(word) or lexicon.WORDS.get(word)


def split_compound(text: str, glossary: Mapping[str, str]) -> list[str] | None:
    """Glosses of the fewest known pieces that spell ``text`` exactly, or None.

    Pieces are known words of two or more syllables, a bound prefix at the start (고 high, 항 anti)
    and bound suffixes after it (염 inflammation, 성 related); at least one piece is a word. A
    single syllable is never read as a free word here: 당신 is not sugar + kidney.
    """
    best: list[list[tuple[str, bool]] | None] = [None] * (len(text) + 1)
    best[0] = []
    for end in range(1, len(text) + 1):
        for start in (k for k in range(end) if best[k] is not None):
            head = best[start]
            gloss = _piece_gloss(text[start:end], glossary, first=start == 0)
            if gloss and (best[end] is None or len(head) + 1 < len(best[end])):
                best[end] = [*head, (gloss, end - start > 1)]
    found = best[len(text)]
    if not found or len(found) < 2 or not any(is_word for _, is_word in found):
        return None
    return [gloss for gloss, _ in found]


def _piece_gloss(piece: str, glossary: Mapping[str, str], first: bool) -> str | None:
    if len(piece) >= 2:
        return lookup(piece, glossary)
    return lexicon.PREFIXES.get(piece) if first else lexicon.SUFFIXES.get(piece)


def gloss_stem(analysis: Analysis, glossary: Mapping[str, str]) -> str | None:
    """The stem's gloss: a verb by its base form, else the written stem or a compound of words.

    A verb is only glossed as a verb: 열고 (open, and) must not borrow the noun 열 (fever).
    """
    text = analysis.stem_text
    if not text:
        return None
    if analysis.is_verb:
        return lexicon.VERBS.get(analysis.stem[0].form)
    gloss = lookup(text, glossary)
    if gloss:
        return gloss
    parts = split_compound(text, glossary)
    return " ".join(parts) if parts else None


def role(morph: Morph) -> str | None:
    """A particle or ending named by its grammatical role; None for what needs no name."""
    return lexicon.ROLES.get((morph.tag, morph.form)) or lexicon.TAG_ROLES.get(morph.tag)


def roles(analysis: Analysis) -> str:
    """The tail's roles in order, each once: ``copula is, past tense, declarative ending``."""
    named = [r for r in (role(m) for m in analysis.roles) if r]
    return ", ".join(dict.fromkeys(named))


def split_particle(text: str, glossary: Mapping[str, str]) -> str | None:
    """``known word + particle`` when Kiwi read a word it does not know together with its particle.

    Kiwi takes an unknown noun and its particle for one noun (알도스테론이); a known word followed
    by a case particle is read as exactly that.
    """
    for particle, name in lexicon.PARTICLES.items():
        head = text.removesuffix(particle)
        gloss = lookup(head, glossary) if len(head) >= 2 and head != text else None
        if gloss:
            return f"{gloss} + {name}"
    return None


def fragment_of(text: str, glossary: Mapping[str, str]) -> str | None:
    """``piece of X`` when ``text`` starts or ends one or two known terms barely longer than it.

    Only the edge of a term counts and only a few syllables may be missing, so the piece is what
    the tokenizer cut from that very word (푸로세 from 푸로세미드), never a word inside a phrase.
    """
    if len(text) < 2:
        return None
    glosses = []
    for term, gloss in (*glossary.items(), *lexicon.WORDS.items()):
        extra = len(term) - len(text)
        if (
            0 < extra <= FRAGMENT_MAX_EXTRA
            and (term.startswith(text) or term.endswith(text))
            and gloss not in glosses
        ):
            glosses.append(gloss)
    if not glosses or len(glosses) > FRAGMENT_MAX_TERMS:
        return None
    return "piece of " + " or ".join(sorted(glosses))


def looks_like_loanword(text: str) -> bool:
    """Two syllables typical of transliterations (see :data:`lexicon.LOAN_SYLLABLES`) in a word.

    Transliterations are full of the inserted vowel ㅡ (스, 트, 프) and of consonant-vowel pairs
    native words rarely use (테, 퍼, 슐).
    """
    return sum(ch in lexicon.LOAN_SYLLABLES for ch in text) >= 2


def describe_symbol(token: str) -> str | None:
    """Units and prompt markers by their words, special characters by their Unicode name."""
    surface = token.removeprefix(WORD_BOUNDARY)
    if surface.endswith(":") or "_" in surface:
        words = re.sub(r"[_:\-]+", " ", surface).strip()
        for korean, english in MARKER_GLOSSES.items():
            words = words.replace(korean, english)
        return f"prompt section marker for {english_gloss(words) or 'structured prompt'}"
    if "/" in surface:
        return describe_unit(surface)
    if len(surface) == 1 and not is_pure_hangul(surface):
        name = unicodedata.name(surface, "")
        return f"symbol {name.lower()}" if name else None
    return None


def describe_unit(unit: str) -> str | None:
    """``mg/dL`` → ``unit milligram per decilitre``; None if a part is not a known unit."""
    parts = [_unit_words(p) for p in unit.split("/")]
    if None in parts or not any(parts):
        return None
    return "unit " + " per ".join(parts) if parts[0] else "unit per " + " per ".join(parts[1:])


def _unit_words(part: str) -> str | None:
    if not part or part in lexicon.UNITS:
        return lexicon.UNITS.get(part, "")
    prefix, base = part[0], part[1:]
    if prefix in lexicon.UNIT_PREFIXES and base in lexicon.UNITS:
        return lexicon.UNIT_PREFIXES[prefix] + lexicon.UNITS[base]
    return None


def describe_latin(token: str, token_id: int, word: str) -> Description:
    """A number, or Latin-script text the base model already reads, quoted as itself."""
    if not word:
        return Description(token, token_id, GENERIC_DESCRIPTION, "generic")
    text = f"number {word}" if word.isdigit() else f"text {word}"
    return Description(token, token_id, text, "exact")


def describe_token(token: str, token_id: int, glossary: Mapping[str, str]) -> Description:
    """First description that applies: exact, morpheme, fragment, loanword, generic (module doc)."""
    symbol = describe_symbol(token)
    if symbol:
        return Description(token, token_id, symbol, "exact")
    surface = token.removeprefix(WORD_BOUNDARY)
    word = surface.rstrip(TRAILING_PUNCTUATION)
    exact = lookup(word, glossary)
    if exact:
        return Description(token, token_id, exact, "exact")
    if not HANGUL_RE.search(word):
        return describe_latin(token, token_id, word)
    text, method = describe_hangul(split_token(surface), glossary)
    return Description(token, token_id, text, method)


def describe_hangul(analysis: Analysis, glossary: Mapping[str, str]) -> tuple[str, str]:
    """Rules 2 to 5 for a Korean token Kiwi analysed: the description and its method."""
    tail = roles(analysis)
    stem = gloss_stem(analysis, glossary)
    if stem or (tail and not analysis.stem):
        return _joined(stem, tail), "morpheme"
    stem_text = analysis.stem_text
    particle = split_particle(stem_text, glossary)
    if particle:
        return _joined(particle, tail), "morpheme"
    fragment = None if analysis.is_known_word else fragment_of(stem_text, glossary)
    if fragment:
        return _joined(fragment, tail), "fragment"
    if is_pure_hangul(stem_text) and looks_like_loanword(stem_text):
        return _joined(f"loanword sounding like {romanize_loanword(stem_text)}", tail), "loanword"
    return _joined(GENERIC_DESCRIPTION, tail), "generic"


def _joined(*parts: str | None) -> str:
    return " + ".join(p for p in parts if p)


def describe_tokens(
    tokens: Sequence[tuple[str, int]], glossary: Mapping[str, str]
) -> list[Description]:
    """Describe every new token (step 1: rule-based, before review)."""
    return [describe_token(token, token_id, glossary) for token, token_id in tokens]


def combine(rule_based: Sequence[Description], llm: Sequence[Description]) -> list[Description]:
    """Per token, the better of the rule-based and the LLM description, by a stated rule.

    The rule-based one is kept unless it is generic and the LLM's is usable: written for the same
    token and id, and passing every blocking text check after :func:`fix_text` (English only, no
    quotes or brackets, not empty) without being the generic fallback itself. Everywhere else the
    rule-based description wins, because it is measured more accurate on the gold set
    (``data/03_eval/token_gold.jsonl``).
    """
    usable = {}
    for d in llm:
        fixed = replace(d, description=fix_text(d.description), method="llm")
        clean = not any(text_violations([fixed]).values())
        if clean and fixed.description != GENERIC_DESCRIPTION:
            usable[(d.token, d.token_id)] = fixed
    return [
        usable.get((d.token, d.token_id), d) if d.method in REPLACEABLE_BY_LLM else d
        for d in rule_based
    ]


def make_unique(descriptions: Sequence[Description]) -> list[Description]:
    """Review pass 1: give repeated descriptions token-specific context (romanization, position).

    Identical descriptions would give different tokens identical initial embeddings; the added
    context (e.g. ``subject particle, ga at word start``) keeps them apart without using Hangul.
    """
    counts = Counter(d.description for d in descriptions)
    out = []
    for d in descriptions:
        if counts[d.description] > 1:
            surface = d.token.removeprefix(WORD_BOUNDARY)
            context = romanize(surface) or "symbol"
            position = "at word start" if d.token.startswith(WORD_BOUNDARY) else "inside a word"
            d = replace(d, description=f"{d.description}, {context} {position}")
        out.append(d)
    return out


def fix_text(description: str) -> str:
    """Review pass 2: strip Hangul, bracketed asides, quotes and brackets; collapse spaces."""
    text = PAREN_CONTENT_RE.sub(" ", description)
    text = HANGUL_RUN_RE.sub(" ", text)
    text = QUOTES_RE.sub("", PARENS_RE.sub(" ", text))
    return SPACES_RE.sub(" ", text).strip(" ,;")


def fix(descriptions: Sequence[Description]) -> list[Description]:
    """Apply :func:`fix_text`; a description emptied by fixing falls back to the generic one."""
    out = []
    for d in descriptions:
        text = fix_text(d.description)
        fixed = replace(d, description=text) if text else None
        out.append(fixed or replace(d, description=GENERIC_DESCRIPTION, method="generic"))
    return out


def review(descriptions: Sequence[Description]) -> list[Description]:
    """The review passes: make unique, then fix."""
    return fix(make_unique(descriptions))


@dataclass(frozen=True)
class Violation:
    """A description that breaks a validation rule."""

    token: str
    token_id: int
    problem: str


def text_violations(descriptions: Sequence[Description]) -> dict[str, list[Violation]]:
    """Every blocking text rule with the descriptions that break it."""
    rules = {
        "no_hangul": lambda s: HANGUL_RE.search(s) is None,
        "no_quotes": lambda s: QUOTES_RE.search(s) is None,
        "no_parentheses": lambda s: PARENS_RE.search(s) is None,
        "clean_spaces": lambda s: s == s.strip() and "  " not in s,
        "not_empty": lambda s: bool(s.strip()),
    }
    return {
        name: [
            Violation(d.token, d.token_id, d.description)
            for d in descriptions
            if not ok(d.description)
        ]
        for name, ok in rules.items()
    }


def coverage_violations(
    descriptions: Sequence[Description], expected: Mapping[str, int]
) -> list[Violation]:
    """Tokens missing, described twice, unknown to the tokenizer, or with a wrong id."""
    seen = Counter(d.token for d in descriptions)
    problems = [Violation(t, i, "missing") for t, i in expected.items() if seen[t] == 0]
    for d in descriptions:
        if d.token not in expected:
            problems.append(Violation(d.token, d.token_id, "not a new token of this tokenizer"))
        elif expected[d.token] != d.token_id:
            problems.append(
                Violation(
                    d.token, d.token_id, f"id {d.token_id} but tokenizer has {expected[d.token]}"
                )
            )
        elif seen[d.token] > 1:
            problems.append(Violation(d.token, d.token_id, f"described {seen[d.token]} times"))
    return problems


def method_breakdown(descriptions: Sequence[Description]) -> dict[str, float]:
    """Share of each method (see :data:`METHODS`)."""
    counts = Counter(d.method for d in descriptions)
    total = max(len(descriptions), 1)
    return {m: round(counts[m] / total, 4) for m in METHODS}


def unique_ratio(descriptions: Sequence[Description]) -> float:
    """Distinct descriptions over descriptions."""
    return len({d.description for d in descriptions}) / max(len(descriptions), 1)
