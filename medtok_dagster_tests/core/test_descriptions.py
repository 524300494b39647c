"""Description building (real Kiwi, real lexicon), the LLM combination rule, review, validation."""

import pytest

from medtok_dagster.assets.descriptions import DescriptionChecksConfig, validate
from medtok_dagster.core import descriptions as D
from medtok_dagster.core import gold

GLOSSARY_ENTRIES = [
    ("심근경색", "myocardial infarction; 관상동맥이 막혀 심근이 괴사하는 질환"),
    ("당뇨병", "Diabetes mellitus (DM). 혈당이 높은 대사 질환"),
    ("폐렴", "폐의 염증"),
    ("간", ""),
    ("심근경색", "duplicate"),
]
KCD_ENTRIES = [
    ("비당뇨병성저혈당성혼수", "Nondiabetic hypoglycemic coma; 당뇨병이 없는 사람의 저혈당 혼수"),
    (
        "고혈압성심장및신장병",
        "Hypertensive heart and renal disease; 고혈압에 의한 심장과 콩팥의 병",
    ),
    ("활성화부분트롬보플라스틴시간", "activated partial thromboplastin time; 응고 검사"),
    ("코피", "epistaxis; 코에서 나는 출혈"),
    ("귀지", "cerumen; 귀 안의 분비물"),
]
"""A KCD-like term list like the one the issue was found on: long terms that contain short words."""


def test_glossary_counts_dictionary_defects():
    glossary, issues = D.build_glossary(GLOSSARY_ENTRIES)
    assert glossary == {"심근경색": "myocardial infarction", "당뇨병": "Diabetes mellitus"}
    assert issues == {"duplicate_term": 1, "empty_definition": 1, "hangul_only_definition": 1}


@pytest.mark.parametrize(
    ("token", "method", "description"),
    [
        ("▁심근경색", "exact", "myocardial infarction"),
        ("▁심근경색을", "morpheme", "myocardial infarction + object particle"),
        ("당뇨병성", "exact", "diabetic"),
        ("신우신염", "morpheme", "renal pelvis nephritis"),
        ("▁환자가", "morpheme", "patient + subject particle"),
        (
            "▁차단되는",
            "morpheme",
            "blocking, blockade + passive verb suffix become, adnominal ending",
        ),
        ("▁열고", "morpheme", "open + connective ending and"),
        ("었습니다.", "morpheme", "past tense, formal polite ending"),
        ("▁알도스테론이", "morpheme", "aldosterone + subject particle"),
        ("고혈당성", "morpheme", "hyperglycaemia, high blood sugar related"),
        ("푸로세", "exact", "piece of furosemide"),
        ("크레", "fragment", "piece of creatine"),
        ("▁테르부탈린", "loanword", "loanword sounding like terbutalin"),
        ("38", "exact", "number 38"),
        ("▁mg/dL", "exact", "unit milligram per decilitre"),
        ("×10³/μL", "exact", "unit times a thousand per microlitre"),
        ("≥", "exact", "symbol greater-than or equal to"),
        ("answer:", "exact", "prompt section marker for answer"),
        ("근경", "generic", "Korean word piece"),
        ("쀍뛻을", "generic", "Korean word piece + object particle"),
    ],
)
def test_describe_token_methods(token, method, description):
    glossary, _ = D.build_glossary(GLOSSARY_ENTRIES)
    described = D.describe_tokens([(token, 1)], glossary)[0]
    assert (described.method, described.description) == (method, description)


ISSUE_EXAMPLES = [
    ("▁당뇨병", [["diabetes"]]),
    ("혈당", [["blood sugar"]]),
    ("▁고혈압", [["hypertension"]]),
    ("시간", [["time"]]),
    ("비용", [["cost"]]),
    ("당신", [["you"]]),
    ("▁성대마비", [["vocal cord paralysis"]]),
    ("▁정상이었다.", [["normal"], ["past"]]),
    ("카테터", [["catheter"]]),
]


@pytest.mark.parametrize(("token", "key"), ISSUE_EXAMPLES)
def test_the_wrong_examples_of_the_issue_never_recur(token, key):
    """Each was glossed by a longer term containing it, or by one-syllable morphemes (당 신 비)."""
    glossary, _ = D.build_glossary(KCD_ENTRIES)
    described = D.describe_tokens([(token, 1)], glossary)[0]
    assert (
        gold.judge(described, gold.GoldToken(token, "issue", "", tuple(map(tuple, key))))
        == "correct"
    ), described
    old_glosses = ("part of the term", "nose", "ear", "kidney and sugar", "word piece related")
    assert not any(gold.mentions(described.description, old) for old in old_glosses)


def test_no_token_is_glossed_by_a_longer_term_that_merely_contains_it():
    glossary, _ = D.build_glossary(KCD_ENTRIES)
    for token in ("저혈당", "심장", "트롬보", "신장병"):
        described = D.describe_tokens([(token, 1)], glossary)[0]
        assert all(
            term not in described.description
            for term in ("coma", "renal disease", "thromboplastin")
        ), described


def test_compound_split_needs_known_words_and_reads_no_free_single_syllable():
    assert D.split_compound("성대마비", {}) == ["vocal cords", "paralysis"]
    assert D.split_compound("저나트륨", {}) == ["low", "sodium"]
    assert D.split_compound("당신", {}) is None
    assert D.split_compound("상과", {}) is None


def test_fragment_needs_the_edge_of_a_term_at_most_three_syllables_longer():
    glossary = {
        "세팔로스포린": "cephalosporin",
        "세팔렉신": "cephalexin",
        "비당뇨병성저혈당성혼수": "coma",
    }
    assert D.fragment_of("세팔", glossary) == "piece of cephalexin"
    assert D.fragment_of("세팔로스", glossary) == "piece of cephalosporin"
    assert D.fragment_of("저혈당", glossary) is None


def test_loanword_romanisation_reads_like_the_english_word():
    assert D.romanize_loanword("에스트로겐") == "estrogen"
    assert D.romanize_loanword("카테터") == "kateter"
    assert D.romanize_loanword("인슐린") == "insyulin"


def test_combine_prefers_rules_and_takes_a_usable_llm_description_only_for_generic_tokens():
    rules = [
        D.Description("▁환자", 1, "patient", "exact"),
        D.Description("▁뷁", 2, "Korean word piece", "generic"),
        D.Description("▁뭵", 3, "Korean word piece", "generic"),
        D.Description("▁쀍", 4, "Korean word piece", "generic"),
    ]
    llm = [
        D.Description("▁환자", 1, "a doctor", "llm"),
        D.Description("▁뷁", 2, "a made-up syllable.", "llm"),
        D.Description("▁뭵", 3, "뭵 in Korean", "llm"),
        D.Description("▁쀍", 99, "stale id", "llm"),
    ]
    combined = D.combine(rules, llm)
    assert [(d.description, d.method) for d in combined] == [
        ("patient", "exact"),
        ("a made-up syllable.", "llm"),
        ("in Korean", "llm"),
        ("Korean word piece", "generic"),
    ]


def test_review_makes_descriptions_unique_and_clean():
    raw = [
        D.Description("▁환자가", 1, "subject particle", "morpheme"),
        D.Description("▁간호사가", 2, "subject particle", "morpheme"),
        D.Description("폐렴", 3, "pneumonia (폐렴) 'lung'", "exact"),
    ]
    reviewed = D.review(raw)
    assert D.unique_ratio(reviewed) == 1.0
    assert reviewed[0].description == "subject particle, hwanjaga at word start"
    assert reviewed[2].description == "pneumonia lung"
    assert not any(D.text_violations(reviewed).values())


def test_romanize():
    assert D.romanize("당뇨병") == "dangnyobyeong"
    assert D.romanize("A중환자실") == "junghwanjasil"


def test_method_breakdown_names_every_method():
    breakdown = D.method_breakdown(
        [D.Description("a", 1, "x", "llm"), D.Description("b", 2, "y", "generic")]
    )
    assert breakdown == {
        "exact": 0.0,
        "morpheme": 0.0,
        "fragment": 0.0,
        "loanword": 0.0,
        "llm": 0.5,
        "generic": 0.5,
    }


CLEAN = [
    D.Description("▁가", 100, "subject particle", "morpheme"),
    D.Description("▁나", 101, "first person pronoun", "exact"),
]
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
        (
            D.Description("▁나", 999, "first person pronoun", "exact"),
            "every_new_token_described_once",
        ),
    ],
)
def test_each_planted_defect_fails_its_blocking_check(planted, failing):
    results = {
        r.check_name: r
        for r in validate(
            [CLEAN[0], planted], EXPECTED, DescriptionChecksConfig(), "token_descriptions"
        )
    }
    assert not results[failing].passed
    assert "▁나" in results[failing].metadata["offenders"].value
    assert all(
        r.passed
        for name, r in results.items()
        if name not in (failing, "unique_ratio", "generic_fraction")
    )


def test_coverage_names_missing_duplicate_and_unknown_tokens():
    planted = [CLEAN[0], CLEAN[0], D.Description("▁다", 102, "x", "exact")]
    problems = {(v.token, v.problem) for v in D.coverage_violations(planted, EXPECTED)}
    assert problems == {
        ("▁나", "missing"),
        ("▁가", "described 2 times"),
        ("▁다", "not a new token of this tokenizer"),
    }


def test_warning_checks_use_thresholds():
    generic = [
        D.Description("▁가", 100, "Korean word piece", "generic"),
        D.Description("▁나", 101, "Korean word piece", "generic"),
    ]
    results = {
        r.check_name: r
        for r in validate(generic, EXPECTED, DescriptionChecksConfig(), "token_descriptions")
    }
    assert not results["unique_ratio"].passed and results["unique_ratio"].severity.value == "WARN"
    assert not results["generic_fraction"].passed
