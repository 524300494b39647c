import json
from pathlib import Path

import pytest

from medtok_dagster.core.dictionary import (
    extract_raw_terms,
    load_dictionary,
    refine_term,
    refine_terms,
)
from medtok_dagster.core.io import InputError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dictionary_terms_6k.txt"


@pytest.mark.parametrize(
    ("raw", "term", "reason"),
    [
        ("심근경색", "심근경색", "kept"),
        ("(골)수강", "골수강", "resolved_optional_prefix"),
        ("[뇌척]수막염", "뇌척수막염", "resolved_optional_prefix"),
        ("B형간염", None, "english_mixed"),
        ("β차단제", None, "english_mixed"),
        ("제2형당뇨병", None, "contains_digit"),
        ("간", None, "too_short"),
        ("경피적관상동맥중재술후재협착증후군", None, "too_long"),
        ("급성 신우신염", None, "multi_word"),
        ("심장-폐", None, "non_hangul_symbol"),
        ("  폐렴 ", "폐렴", "kept"),
        ("뇌졸중(중풍)", "뇌졸중", "synonym_dropped"),
        ("안검 (눈꺼풀)", "안검", "synonym_dropped"),
    ],
)
def test_refine_term(raw, term, reason):
    assert refine_term(raw) == (term, reason)


def test_refine_terms_marks_duplicates():
    frame = refine_terms(["폐렴", "폐렴", "(폐)렴"])
    assert frame["reason"].tolist() == ["kept", "duplicate", "duplicate"]
    assert frame["kept"].sum() == 1


def test_load_dictionary_counts_defects(tmp_path):
    entries = [
        {"term": "폐렴", "definition": "pneumonia; 폐의 염증"},
        {"term": "폐렴", "definition": "duplicate"},
        {"term": "간", "definition": ""},
        {"term": "위염", "definition": "위 점막의 염증"},
        {"term": "심장마비, 심정지", "definition": "cardiac arrest"},
    ]
    path = tmp_path / "dict.json"
    path.write_text(json.dumps(entries, ensure_ascii=False, indent=1), encoding="utf-8")
    loaded = load_dictionary(path)
    assert [e.term for e in loaded.entries] == ["폐렴", "간", "위염", "심장마비, 심정지"]
    assert (loaded.duplicate_terms, loaded.empty_definitions, loaded.hangul_only_definitions) == (
        1,
        1,
        1,
    )
    assert extract_raw_terms(loaded.entries) == ["폐렴", "간", "위염", "심장마비", "심정지"]


def test_entry_without_term_names_line(tmp_path):
    path = tmp_path / "dict.json"
    path.write_text(
        '[\n {"term": "폐렴", "definition": "x"},\n {"definition": "no term"}\n]', encoding="utf-8"
    )
    with pytest.raises(InputError) as err:
        load_dictionary(path)
    assert err.value.line == 3 and "entry #2 has no 'term'" in str(err.value)
    loaded = load_dictionary(path, lenient=True)
    assert loaded.skips.as_dict() == {"missing_term": 1}


def test_refiner_on_prototype_sized_term_list():
    raw = FIXTURE.read_text(encoding="utf-8").splitlines()
    assert len(raw) == 6000
    refined = refine_terms(raw)
    kept = refined[refined["kept"]]
    assert kept["term"].map(lambda t: 2 <= len(t) <= 15 and all("가" <= c <= "힣" for c in t)).all()
    assert kept["term"].is_unique
    removed = refined[~refined["kept"]]
    assert (
        removed["reason"]
        .isin(
            [
                "english_mixed",
                "contains_digit",
                "too_short",
                "too_long",
                "multi_word",
                "non_hangul_symbol",
                "duplicate",
                "empty",
            ]
        )
        .all()
    )
    assert 0.5 < len(kept) / len(raw) < 0.95
