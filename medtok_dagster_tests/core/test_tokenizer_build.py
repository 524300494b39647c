"""Token selection and both tokenizer strategies, on the real Gemma 3 tokenizer."""

from collections import Counter

import pytest
from transformers import AutoTokenizer

from medtok_dagster.core import tokenizer_build as tb

LINES = [
    "당뇨병 환자의 혈당 조절이 필요합니다.",
    "중환자실에서 심근경색 환자를 치료했다.",
    "당뇨병 환자는 혈당을 자주 측정한다.",
    "급성 심근경색 환자의 흉통은 30분 이상 지속된다.",
    "중환자실 간호사는 활력징후를 확인한다.",
] * 8
CANDIDATES = [
    tb.Candidate(s, "medical")
    for s in [
        "환자",
        "당뇨병",
        "혈당",
        "심근경색",
        "중환자실",
        "치료",
        "환자의",
        "조절",
        "간호사",
        "활력징후",
    ]
]


def test_line_units_mark_word_starts():
    assert tb.line_units("당뇨병 환자의  혈당") == ["당뇨병", "▁환자의", "▁▁혈당"]
    assert tb.unit_frequencies(["가 나", "가"]) == Counter({"가": 2, "▁나": 1})


@pytest.mark.parametrize("strategy", tb.STRATEGIES)
def test_estimated_savings_match_the_real_tokenizer(gemma_tokenizer, tmp_path, strategy):
    units = tb.unit_frequencies(LINES)
    plan = tb.plan_variant(
        gemma_tokenizer,
        strategy,
        ["question:", "- 평가기준:"],
        [tb.Candidate("심근경색", "dictionary")],
        CANDIDATES,
        units,
        budget=14,
    )
    tokenizer = tb.build_extended_tokenizer(
        gemma_tokenizer, strategy, plan.tier1, plan.selection, plan.merges, tmp_path
    )
    base = sum(len(gemma_tokenizer.encode(line, add_special_tokens=False)) for line in LINES)
    new = sum(len(tokenizer.encode(line, add_special_tokens=False)) for line in LINES)
    saved = sum(c.gain for c in plan.selection.choices)
    assert plan.selection.base_tokens == base
    assert base - new == pytest.approx(saved, rel=0.02)
    assert len(tokenizer) - len(gemma_tokenizer) <= 14
    assert {(c.form, c.source) for c in plan.selection.choices} >= {("▁심근경색", "dictionary")}
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(LINES[1]) == tokenizer.encode(LINES[1])
    assert all(
        reloaded.decode(reloaded.encode(line, add_special_tokens=False)) == line for line in LINES
    )


def test_word_initial_form_wins_for_word_initial_words(gemma_tokenizer, tmp_path):
    units = tb.unit_frequencies(["그 당뇨병 환자", "이 당뇨병 환자"] * 10)
    plan = tb.plan_variant(
        gemma_tokenizer,
        "added_tokens",
        [],
        [],
        [tb.Candidate("당뇨병", "medical")],
        units,
        budget=1,
    )
    assert [c.form for c in plan.selection.choices] == ["▁당뇨병"]
    tokenizer = tb.build_extended_tokenizer(
        gemma_tokenizer, "added_tokens", plan.tier1, plan.selection, plan.merges, tmp_path
    )
    assert tokenizer.tokenize("그 당뇨병 환자")[1] == "▁당뇨병"


@pytest.mark.parametrize("strategy", tb.STRATEGIES)
def test_base_strings_are_never_re_added(gemma_tokenizer, tmp_path, strategy):
    vocab = gemma_tokenizer.get_vocab()
    in_base = [s for s in ("▁필요", "합니다", "▁치료") if s in vocab]
    assert in_base
    units = tb.unit_frequencies(LINES)
    plan = tb.plan_variant(
        gemma_tokenizer,
        strategy,
        ["▁이상"],
        [],
        [tb.Candidate(s.lstrip("▁"), "general") for s in in_base] + CANDIDATES,
        units,
        budget=30,
    )
    assert plan.tier1_in_base == ["▁이상"]
    tokenizer = tb.build_extended_tokenizer(
        gemma_tokenizer, strategy, plan.tier1, plan.selection, plan.merges, tmp_path
    )
    new = tb.new_token_ids(tokenizer, len(gemma_tokenizer))
    assert not set(new) & set(vocab)
    english = "The patient was admitted to the intensive care unit; def f(x): return x ** 2"
    assert tokenizer.encode(english) == gemma_tokenizer.encode(english)


def test_bpe_merge_keeps_compounds_whole(gemma_tokenizer, tmp_path):
    units = tb.unit_frequencies(["그 중환자실에서 환자가 중환자실로"] * 20)
    plan = tb.plan_variant(
        gemma_tokenizer,
        "bpe_merge",
        [],
        [],
        [tb.Candidate("중환자실", "medical"), tb.Candidate("환자", "medical")],
        units,
        budget=10,
    )
    tokenizer = tb.build_extended_tokenizer(
        gemma_tokenizer, "bpe_merge", plan.tier1, plan.selection, plan.merges, tmp_path
    )
    assert "▁중환자실" in tokenizer.tokenize("그 중환자실에서")
    assert all(
        e.startswith("▁") or e in ("환자",) or len(e) >= 2 for e in plan.selection.new_entries
    )


def test_new_ids_start_after_medgemma_image_token(gemma_tokenizer, tmp_path):
    medgemma_like = AutoTokenizer.from_pretrained(gemma_tokenizer.name_or_path)
    medgemma_like.add_special_tokens({"additional_special_tokens": ["<image_soft_token>"]})
    assert len(medgemma_like) == 262145
    units = tb.unit_frequencies(LINES)
    plan = tb.plan_variant(
        medgemma_like, "added_tokens", ["question:"], [], CANDIDATES, units, budget=5
    )
    tokenizer = tb.build_extended_tokenizer(
        medgemma_like, "added_tokens", plan.tier1, plan.selection, plan.merges, tmp_path
    )
    ids = tb.new_token_ids(tokenizer, len(medgemma_like))
    assert min(ids.values()) == 262145
    assert sorted(ids.values()) == list(range(262145, 262145 + len(ids)))
    assert tokenizer.convert_tokens_to_ids("<image_soft_token>") == 262144


def test_mix_units_balances_domains():
    mixed = tb.mix_units(Counter({"a": 1}), Counter({"b": 99}), 0.5)
    assert mixed["a"] == pytest.approx(99)
