"""English descriptions for new tokens: dictionary lookup, morpheme rules, review passes, validation.

A new token's embedding is initialised from the base embeddings of its English description, so a
description must be English only (Hangul would map back to the very byte pieces we are replacing),
specific (a shared "medical term" gives many tokens one embedding), and free of quotes and brackets
(noise tokens). The passes below are pure functions so each can be tested and re-run on LLM output.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from medtok_dagster.core.text import HANGUL_RE, WORD_BOUNDARY, is_pure_hangul

METHODS = ("exact", "partial", "morpheme", "generic")
GENERIC_DESCRIPTION = "Korean word piece"
QUOTES_RE = re.compile(r"[\"'`‘’“”]")
PARENS_RE = re.compile(r"[()\[\]{}]")
PAREN_CONTENT_RE = re.compile(r"\([^)]*\)|\[[^\]]*\]")
HANGUL_RUN_RE = re.compile(f"{HANGUL_RE.pattern}+")
LATIN_RE = re.compile(r"[A-Za-z]")
SPACES_RE = re.compile(r"\s+")

SUFFIX_RULES: tuple[tuple[str, str], ...] = (
    ("세포", "cell"), ("검사", "test or examination"), ("치료", "treatment"), ("수술", "surgery"), ("증후군", "syndrome"),
    ("질환", "disorder"), ("장애", "disorder or impairment"), ("요법", "therapy"), ("주사", "injection"), ("수치", "measured level"),
    ("병", "disease"), ("증", "symptom or syndrome"), ("염", "inflammation"), ("술", "surgical procedure"), ("암", "cancer"),
    ("종", "tumour or mass"), ("통", "pain"), ("균", "bacterium"), ("제", "agent or drug"), ("약", "medication or drug"),
    ("과", "medical department or family"), ("선", "gland or line"), ("관", "duct or vessel"), ("근", "muscle"), ("골", "bone"),
)
ENDING_RULES: tuple[tuple[str, str], ...] = (
    ("습니다", "formal polite verb ending"), ("니다", "formal polite verb ending"), ("하고", "connective form of to do"),
    ("하며", "connective form of to do"), ("되는", "adnominal passive form"), ("중인", "in progress"), ("할", "adnominal future form of a verb"),
    ("한", "adnominal past form of a verb"), ("합니다", "formal polite form of to do"), ("했다", "past tense of to do"),
    ("한다", "plain present form of to do"), ("하는", "adnominal form of to do"), ("하여", "connective form of to do"),
    ("된다", "passive form to become"), ("되었다", "past passive form"), ("있다", "to exist or have"), ("없다", "to not exist"),
    ("입니다", "formal copula is"), ("이다", "copula is"), ("다고", "verb phrase or quotation"), ("지만", "connective but"),
    ("는데", "connective background ending"), ("에서", "locative particle at or from"), ("에게", "dative particle to"),
    ("으로", "instrumental particle by or toward"), ("로", "instrumental particle by or toward"), ("의", "possessive particle of"),
    ("은", "topic particle"), ("는", "topic particle"), ("이", "subject particle"), ("가", "subject particle"),
    ("을", "object particle"), ("를", "object particle"), ("와", "conjunctive particle and"), ("과", "conjunctive particle and"),
    ("도", "additive particle also"), ("에", "locative particle at"),
)
MORPHEMES: Mapping[str, str] = {
    "심": "heart", "폐": "lung", "간": "liver", "신": "kidney", "위": "stomach", "장": "intestine", "뇌": "brain", "혈": "blood",
    "골": "bone", "근": "muscle", "피부": "skin", "안": "eye", "이": "ear", "비": "nose", "구강": "oral cavity", "치": "tooth",
    "당": "sugar", "압": "pressure", "열": "fever", "통": "pain", "염": "inflammation", "암": "cancer", "균": "bacteria",
    "약": "drug", "수술": "surgery", "환자": "patient", "증상": "symptom", "진단": "diagnosis", "치료": "treatment",
    "검사": "test", "간호": "nursing", "소아": "child", "산모": "mother after birth", "임신": "pregnancy", "감염": "infection",
    "호흡": "breathing", "혈관": "blood vessel", "신경": "nerve", "세포": "cell", "호르몬": "hormone", "수치": "level",
    "급성": "acute", "만성": "chronic", "경색": "infarction", "출혈": "bleeding", "부전": "failure", "결핵": "tuberculosis",
}
MARKER_GLOSSES: Mapping[str, str] = {"평가기준": "evaluation criteria", "점수표": "score table", "근거요약": "evidence summary"}
_INITIALS = ["g", "kk", "n", "d", "tt", "r", "m", "b", "pp", "s", "ss", "", "j", "jj", "ch", "k", "t", "p", "h"]
_MEDIALS = ["a", "ae", "ya", "yae", "eo", "e", "yeo", "ye", "o", "wa", "wae", "oe", "yo", "u", "wo", "we", "wi", "yu", "eu", "ui", "i"]
_FINALS = ["", "k", "k", "k", "n", "n", "n", "t", "l", "k", "m", "l", "l", "l", "p", "l", "m", "p", "p", "t", "t", "ng", "t", "t", "k", "t", "p", "t"]


@dataclass(frozen=True)
class Description:
    """One new token's description and how it was obtained."""

    token: str
    token_id: int
    description: str
    method: str


def romanize(text: str) -> str:
    """Revised Romanization of Hangul syllables (other characters dropped): English-safe token context."""
    out = []
    for ch in text:
        code = ord(ch) - 0xAC00
        if 0 <= code < 11172:
            out.append(_INITIALS[code // 588] + _MEDIALS[(code % 588) // 28] + _FINALS[code % 28])
    return "".join(out)


def english_gloss(definition: str) -> str:
    """The English part of a dictionary definition (``myocardial infarction; 관상동맥이 …``)."""
    for part in re.split(r"[;:.\n]", definition):
        cleaned = SPACES_RE.sub(" ", HANGUL_RUN_RE.sub(" ", PAREN_CONTENT_RE.sub(" ", part))).strip(" ,-")
        if len(LATIN_RE.findall(cleaned)) >= 3:
            return cleaned
    return ""


def build_glossary(entries: Iterable[tuple[str, str]]) -> tuple[dict[str, str], Counter[str]]:
    """Term → English gloss; counts duplicate terms, empty and Hangul-only definitions (handled, not fatal)."""
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


def _partial(surface: str, glossary: Mapping[str, str], by_length: Sequence[str]) -> str | None:
    for term in by_length:
        if len(term) > len(surface) and surface in term:
            return f"part of the term for {glossary[term]}"
        if len(term) < len(surface) and len(term) >= 2 and term in surface:
            rest = surface.replace(term, "", 1)
            suffix = _ending(rest) if rest else None
            return f"{glossary[term]}, {suffix}" if suffix else f"{glossary[term]} in a compound word"
    return None


def _ending(surface: str) -> str | None:
    for ending, meaning in (*ENDING_RULES, *SUFFIX_RULES):
        if surface.endswith(ending):
            return meaning
    return None


def _morpheme(surface: str) -> str | None:
    if re.search(r"\d", surface):
        return "numeric expression"
    meaning = _ending(surface)
    if meaning is None:
        return None
    stem = surface[: -1] if len(surface) > 1 else ""
    parts = [MORPHEMES[m] for m in sorted(MORPHEMES, key=len, reverse=True) if m in stem][:2]
    return f"{meaning} related to {' and '.join(parts)}" if parts else meaning


def _symbol(token: str) -> str | None:
    """Special characters by their Unicode name; structural prompt markers by their words."""
    if len(token) == 1 and not is_pure_hangul(token):
        name = unicodedata.name(token, "")
        return f"symbol {name.lower()}" if name else None
    if token.endswith(":") or "_" in token:
        words = re.sub(r"[_:\-]+", " ", token.replace(WORD_BOUNDARY, " ")).strip()
        for korean, english in MARKER_GLOSSES.items():
            words = words.replace(korean, english)
        return f"prompt section marker for {english_gloss(words) or 'structured prompt'}"
    return None


def describe_token(token: str, token_id: int, glossary: Mapping[str, str], by_length: Sequence[str]) -> Description:
    """First description that applies: symbol/marker, exact term, partial term, morpheme rule, generic."""
    surface = token.removeprefix(WORD_BOUNDARY)
    symbol = _symbol(token)
    if symbol:
        return Description(token, token_id, symbol, "exact")
    if surface in glossary:
        return Description(token, token_id, glossary[surface], "exact")
    partial = _partial(surface, glossary, by_length)
    if partial:
        return Description(token, token_id, partial, "partial")
    morpheme = _morpheme(surface)
    if morpheme:
        return Description(token, token_id, morpheme, "morpheme")
    return Description(token, token_id, GENERIC_DESCRIPTION, "generic")


def describe_tokens(tokens: Sequence[tuple[str, int]], glossary: Mapping[str, str]) -> list[Description]:
    """Describe every new token (step 1: dictionary-based, before review)."""
    by_length = sorted(glossary, key=lambda t: (-len(t), t))
    return [describe_token(token, token_id, glossary, by_length) for token, token_id in tokens]


def replace_generic(descriptions: Sequence[Description]) -> list[Description]:
    """Review pass 1: infer a description for generic tokens from the morphemes they contain."""
    out = []
    for d in descriptions:
        if d.method != "generic":
            out.append(d)
            continue
        surface = d.token.removeprefix(WORD_BOUNDARY)
        parts = [MORPHEMES[m] for m in sorted(MORPHEMES, key=len, reverse=True) if m in surface][:2]
        out.append(replace(d, description=f"word piece related to {' and '.join(parts)}", method="morpheme") if parts else d)
    return out


def make_unique(descriptions: Sequence[Description]) -> list[Description]:
    """Review pass 2: give repeated descriptions token-specific context (romanization, word position).

    Identical descriptions would give different tokens identical initial embeddings; the added
    context (e.g. ``subject particle, as in ga``) keeps them apart without using Hangul.
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
    """Review pass 3: strip Hangul, bracketed asides, quotes and brackets; collapse spaces."""
    text = PAREN_CONTENT_RE.sub(" ", description)
    text = HANGUL_RUN_RE.sub(" ", text)
    text = QUOTES_RE.sub("", PARENS_RE.sub(" ", text))
    return SPACES_RE.sub(" ", text).strip(" ,;")


def fix(descriptions: Sequence[Description]) -> list[Description]:
    """Apply :func:`fix_text`; a description emptied by fixing falls back to the generic one."""
    out = []
    for d in descriptions:
        text = fix_text(d.description)
        out.append(replace(d, description=text) if text else replace(d, description=GENERIC_DESCRIPTION, method="generic"))
    return out


def review(descriptions: Sequence[Description]) -> list[Description]:
    """All review passes in the prototype's order: replace generic, make unique, fix."""
    return fix(make_unique(replace_generic(descriptions)))


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
    return {name: [Violation(d.token, d.token_id, d.description) for d in descriptions if not ok(d.description)] for name, ok in rules.items()}


def coverage_violations(descriptions: Sequence[Description], expected: Mapping[str, int]) -> list[Violation]:
    """Tokens missing, described twice, unknown to the tokenizer, or with a wrong id."""
    seen = Counter(d.token for d in descriptions)
    problems = [Violation(t, i, "missing") for t, i in expected.items() if seen[t] == 0]
    for d in descriptions:
        if d.token not in expected:
            problems.append(Violation(d.token, d.token_id, "not a new token of this tokenizer"))
        elif expected[d.token] != d.token_id:
            problems.append(Violation(d.token, d.token_id, f"id {d.token_id} but tokenizer has {expected[d.token]}"))
        elif seen[d.token] > 1:
            problems.append(Violation(d.token, d.token_id, f"described {seen[d.token]} times"))
    return problems


def method_breakdown(descriptions: Sequence[Description]) -> dict[str, float]:
    """Share of each method (exact, partial, morpheme, generic)."""
    counts = Counter(d.method for d in descriptions)
    total = max(len(descriptions), 1)
    return {m: round(counts[m] / total, 4) for m in METHODS}


def unique_ratio(descriptions: Sequence[Description]) -> float:
    """Distinct descriptions over descriptions."""
    return len({d.description for d in descriptions}) / max(len(descriptions), 1)
