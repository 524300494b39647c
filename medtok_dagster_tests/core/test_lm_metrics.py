"""Fair language-model metrics on a tiny Gemma 3 with the real tokenizer, checked against direct computation."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from medtok_dagster.core import lm_metrics as L
from medtok_dagster_tests.conftest import teach

LONG = "급성 신우신염 환자는 발열과 옆구리 통증을 호소한다. " * 6
TEXTS = ["당뇨병 환자의 혈당 조절이 필요합니다.", LONG, "hello world", "μg/dL 단위의 검사 수치"]


@pytest.fixture(scope="module")
def model(tiny_gemma_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_gemma_dir).eval()


def direct_bits(model, ids: list[int], first_scored: int = 1) -> float:
    """Negative log2-likelihood of ids[first_scored:] given what precedes, from the full logits of one forward."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return -sum(logprobs[j - 1, ids[j]].item() for j in range(first_scored, len(ids))) / math.log(2)


def test_windows_score_every_token_exactly_once():
    ids = list(range(100, 137))
    windows = L.windows(0, ids, bos=2, window=8, stride=3)
    scored = [t for w in windows for t in w.ids[w.first_scored :]]
    assert scored == ids
    assert all(w.ids[0] == 2 and len(w.ids) <= 8 for w in windows)
    assert windows[1].first_scored > 1, "later windows carry unscored context"


def test_text_longer_than_the_window_equals_the_sum_over_its_chunks(model, gemma_tokenizer):
    ids = L.encode_plain(gemma_tokenizer, [LONG])[0]
    assert len(ids) > 40
    window, stride = 24, 10
    bos = gemma_tokenizer.bos_token_id
    expected = direct_bits(model, [bos, *ids[:23]])
    scored = 23
    while scored < len(ids):
        end = min(scored + stride, len(ids))
        start = max(end - 23, 0)
        expected += direct_bits(model, [bos, *ids[start:end]], first_scored=1 + scored - start)
        scored = end
    got = L.text_bits(model, gemma_tokenizer, [LONG], window=window, stride=stride)[0]
    assert got == pytest.approx(expected, rel=1e-4)
    whole = L.text_bits(model, gemma_tokenizer, [LONG], window=1024)[0]
    assert whole == pytest.approx(direct_bits(model, [bos, *ids]), rel=1e-4)
    assert whole != pytest.approx(got, rel=1e-4), "windowed context differs from full context"


def test_padded_batch_scores_the_same_as_one_text_at_a_time(model, gemma_tokenizer):
    batched = L.text_bits(model, gemma_tokenizer, TEXTS, token_budget=4096)
    alone = [L.text_bits(model, gemma_tokenizer, [t])[0] for t in TEXTS]
    assert batched == pytest.approx(alone, rel=1e-4)
    by_hand = [
        direct_bits(model, [gemma_tokenizer.bos_token_id, *ids])
        for ids in L.encode_plain(gemma_tokenizer, TEXTS)
    ]
    assert batched == pytest.approx(by_hand, rel=1e-4)


def test_score_counts_every_character_and_token(model, gemma_tokenizer):
    score = L.score_texts(model, gemma_tokenizer, TEXTS)
    assert score.chars == sum(map(len, TEXTS))
    assert score.tokens == sum(len(i) for i in L.encode_plain(gemma_tokenizer, TEXTS))
    assert score.bits_per_char == pytest.approx(
        sum(L.text_bits(model, gemma_tokenizer, TEXTS)) / score.chars
    )
    assert score.loss_per_token == pytest.approx(score.bits * math.log(2) / score.tokens)


QUESTIONS = [
    L.Question(
        "당뇨병 환자의 혈당 조절에 쓰는 약은?",
        ("인슐린", "아스피린", "항생제", "진통제", "수면제"),
        0,
    ),
    L.Question("고혈압의 합병증은?", ("골절", "뇌졸중", "감기", "탈모", "근시"), 1),
    L.Question(
        "급성 충수염의 수술은?",
        ("백내장 수술", "발치", "충수절제술", "제왕절개", "관상동맥우회술"),
        2,
    ),
    L.Question("결핵의 원인균은?", ("대장균", "포도상구균", "연쇄상구균", "결핵균", "폐렴구균"), 3),
]


def test_shared_prefix_scoring_equals_the_naive_per_option_loop(model, gemma_tokenizer):
    fast = L.score_options(model, gemma_tokenizer, QUESTIONS)
    naive = L.score_options_naive(model, gemma_tokenizer, QUESTIONS)
    for a, b in zip(fast.logprobs, naive.logprobs):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-3)
    assert fast.chars[0] == [len(" " + o) for o in QUESTIONS[0].options]


def test_exam_accuracy_on_a_fixture_whose_answers_are_known(tiny_gemma_dir, gemma_tokenizer):
    """A model trained on the right answers picks them; relabelled to a wrong option, it scores zero."""
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir)
    documents = [
        L.encode_plain(gemma_tokenizer, [L.option_texts(q)[0] + L.option_texts(q)[1][q.answer]])[0]
        for q in QUESTIONS
    ]
    blocks = [[gemma_tokenizer.bos_token_id, *d, gemma_tokenizer.eos_token_id] for d in documents]
    longest = max(map(len, blocks))
    blocks = [b + [gemma_tokenizer.pad_token_id] * (longest - len(b)) for b in blocks]
    for p in model.parameters():
        p.requires_grad_(True)
    teach(model, blocks, gemma_tokenizer.bos_token_id, steps=60, learning_rate=3e-3, batch_size=4)
    scores = L.score_options(model, gemma_tokenizer, QUESTIONS)
    right = L.exam_accuracy(QUESTIONS, scores)
    assert (right.accuracy, right.accuracy_unnormalised, right.questions, right.chance) == (
        1.0,
        1.0,
        4,
        0.2,
    )
    wrong = [L.Question(q.question, q.options, (q.answer + 1) % 5) for q in QUESTIONS]
    assert L.exam_accuracy(wrong, scores).accuracy == 0.0


def test_per_character_and_summed_choices_differ_where_lengths_differ():
    question = L.Question("q", ("짧은", "아주 아주 긴 보기"), 1)
    scores = L.OptionScores([[-6.0, -9.0]], [[3, 10]])
    accuracy = L.exam_accuracy([question], scores)
    assert accuracy.correct_per_char == 1 and accuracy.correct_sum == 0


def test_wilson_interval_matches_the_textbook_values():
    low, high = L.wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert L.wilson_interval(0, 20)[0] == 0.0 and L.wilson_interval(20, 20)[1] == 1.0


def test_records_become_questions_with_zero_based_answers():
    records = [
        {"question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "E": "e", "answer": 3},
        {"question": "bad", "A": "a", "answer": 9},
    ]
    assert L.questions_from_records(records) == [L.Question("q", ("a", "b", "c", "d", "e"), 2)]


def test_prefill_speed_counts_characters_and_tokens(model, gemma_tokenizer):
    speed = L.prefill_speed(model, gemma_tokenizer, TEXTS, batch_size=2, repeats=2)
    assert speed.chars == sum(map(len, TEXTS))
    assert speed.tokens == sum(len(i) + 1 for i in L.encode_plain(gemma_tokenizer, TEXTS))
    assert speed.chars_per_second == pytest.approx(speed.chars / speed.seconds)


def test_exam_pass_scores_the_question_texts_as_score_texts_does(model, gemma_tokenizer):
    """The exam row's bits/char come from the same forward pass as the options, and equal the plain metric."""
    exam = L.score_exam(model, gemma_tokenizer, QUESTIONS)
    plain = L.score_texts(model, gemma_tokenizer, [q.question for q in QUESTIONS])
    assert (exam.questions.tokens, exam.questions.chars, exam.questions.texts) == (
        plain.tokens,
        plain.chars,
        4,
    )
    assert exam.questions.bits == pytest.approx(plain.bits, rel=1e-4)


def test_exam_pass_on_the_image_text_model_equals_the_naive_loop_past_the_sliding_window(
    tiny_medgemma_dir, gemma_tokenizer
):
    """MedGemma's structure (cache handed from question to options), and a question longer than the window."""
    model = AutoModelForCausalLM.from_pretrained(tiny_medgemma_dir).eval()
    long = L.Question(LONG, ("신우신염", "방광염과 요도염이 함께 있는 경우"), 0)
    questions = [*QUESTIONS, long]
    exam = L.score_exam(model, gemma_tokenizer, questions)
    naive = L.score_options_naive(model, gemma_tokenizer, questions)
    plain = L.score_texts(model, gemma_tokenizer, [q.question for q in questions])
    for fast, slow in zip(exam.options.logprobs, naive.logprobs):
        assert fast == pytest.approx(slow, rel=1e-4, abs=1e-3)
    assert exam.questions.bits == pytest.approx(plain.bits, rel=1e-4)
    assert model.config.get_text_config().sliding_window == 64
    assert len(L.encode_plain(gemma_tokenizer, [LONG])[0]) > 64
