"""Description building, review passes, and every validation rule with a planted defect."""

import pytest

from medtok_dagster.assets.descriptions import DescriptionChecksConfig, validate
from medtok_dagster.core import descriptions as D

GLOSSARY_ENTRIES = [
    ("심근경색", "myocardial infarction; 관상동맥이 막혀 심근이 괴사하는 질환"),
    ("당뇨병", "Diabetes mellitus (DM). 혈당이 높은 대사 질환"),
    ("폐렴", "폐의 염증"),
    ("간", ""),
    ("심근경색", "duplicate"),
]


def test_glossary_counts_dictionary_defects():
    glossary, issues = D.build_glossary(GLOSSARY_ENTRIES)
    assert glossary == {"심근경색": "myocardial infarction", "당뇨병": "Diabetes mellitus"}
    assert issues == {"duplicate_term": 1, "empty_definition": 1, "hangul_only_definition": 1}


@pytest.mark.parametrize(
    ("token", "method", "contains"),
    [
        ("▁심근경색", "exact", "myocardial infarction"),
        ("당뇨병성", "partial", "Diabetes mellitus"),
        ("근경", "partial", "part of the term for myocardial infarction"),
        ("신우신염", "morpheme", "inflammation related to kidney"),
        ("▁환자가", "morpheme", "subject particle"),
        ("38", "morpheme", "numeric expression"),
        ("≥", "exact", "greater-than or equal to"),
        ("answer:", "exact", "prompt section marker for answer"),
        ("가나", "generic", "Korean word piece"),
    ],
)
def test_describe_token_methods(token, method, contains):
    glossary, _ = D.build_glossary(GLOSSARY_ENTRIES)
    description = D.describe_tokens([(token, 1)], glossary)[0]
    assert description.method == method
    assert contains in description.description


def test_review_makes_descriptions_unique_and_clean():
    raw = [D.Description("▁환자가", 1, "subject particle", "morpheme"), D.Description("▁간호사가", 2, "subject particle", "morpheme"),
           D.Description("폐렴", 3, "pneumonia (폐렴) 'lung'", "exact")]
    reviewed = D.review(raw)
    assert D.unique_ratio(reviewed) == 1.0
    assert reviewed[0].description == "subject particle, hwanjaga at word start"
    assert reviewed[2].description == "pneumonia lung"
    assert not any(D.text_violations(reviewed).values())


def test_romanize():
    assert D.romanize("당뇨병") == "dangnyobyeong"
    assert D.romanize("A중환자실") == "junghwanjasil"


CLEAN = [D.Description("▁가", 100, "subject particle", "morpheme"), D.Description("▁나", 101, "first person pronoun", "exact")]
EXPECTED = {"▁가": 100, "▁나": 101}


@pytest.mark.parametrize(
    ("planted", "failing"),
    [
        (D.Description("▁나", 101, "pronoun 나", "exact"), "no_hangul"),
        (D.Description("▁나", 101, "the 'I' pronoun", "exact"), "no_quotes"),
        (D.Description("▁나", 101, "pronoun (first person)", "exact"), "no_parentheses"),
        (D.Description("▁나", 101, "first  person", "exact"), "clean_spaces"),
        (D.Description("▁나", 101, " first person", "exact"), "clean_spaces"),
        (D.Description("▁나", 101, "", "exact"), "not_empty"),
        (D.Description("▁나", 999, "first person pronoun", "exact"), "every_new_token_described_once"),
    ],
)
def test_each_planted_defect_fails_its_blocking_check(planted, failing):
    results = {r.check_name: r for r in validate([CLEAN[0], planted], EXPECTED, DescriptionChecksConfig(), "token_descriptions")}
    assert not results[failing].passed
    assert "▁나" in results[failing].metadata["offenders"].value
    assert all(r.passed for name, r in results.items() if name not in (failing, "unique_ratio", "generic_fraction"))


def test_coverage_names_missing_duplicate_and_unknown_tokens():
    planted = [CLEAN[0], CLEAN[0], D.Description("▁다", 102, "x", "exact")]
    problems = {(v.token, v.problem) for v in D.coverage_violations(planted, EXPECTED)}
    assert problems == {("▁나", "missing"), ("▁가", "described 2 times"), ("▁다", "not a new token of this tokenizer")}


def test_warning_checks_use_thresholds():
    generic = [D.Description("▁가", 100, "Korean word piece", "generic"), D.Description("▁나", 101, "Korean word piece", "generic")]
    results = {r.check_name: r for r in validate(generic, EXPECTED, DescriptionChecksConfig(), "token_descriptions")}
    assert not results["unique_ratio"].passed and results["unique_ratio"].severity.value == "WARN"
    assert not results["generic_fraction"].passed
