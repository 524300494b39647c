"""Initialisation strategies checked row by row against hand computations."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core import embeddings as E
from medtok_dagster_tests.conftest import make_tiny_gemma


@pytest.fixture(scope="module")
def extended(gemma_tokenizer, tiny_gemma_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    tokenizer.add_tokens(["▁당뇨병", "▁환자", "μg/dL"])
    base_len = len(gemma_tokenizer)
    tokens = [
        E.NewToken("▁당뇨병", base_len, "dictionary", "diabetes mellitus", "exact"),
        E.NewToken("▁환자", base_len + 1, "ngram", "patient", "morpheme"),
        E.NewToken("μg/dL", base_len + 2, "special_char", "", ""),
    ]
    return tokenizer, tokens, base_len


def fresh(model_dir, new_len):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    E.resize_for(model, new_len)
    return model


def ids(tokenizer, text, base_len):
    return [i for i in tokenizer.encode(text, add_special_tokens=False) if i < base_len]


@pytest.mark.parametrize("strategy", E.STRATEGIES)
def test_each_strategy_matches_hand_computation(
    strategy, extended, gemma_tokenizer, tiny_gemma_dir
):
    tokenizer, tokens, base_len = extended
    model = fresh(tiny_gemma_dir, len(tokenizer))
    original = model.get_input_embeddings().weight[:base_len].clone()
    plan = E.plan_init(tokens, strategy, gemma_tokenizer, base_len)
    info = E.apply_init(model, plan, base_len, seed=0)
    weight = model.get_input_embeddings().weight
    mean = original.mean(0)

    def sub(t):
        return original[ids(gemma_tokenizer, t.replace("▁", " "), base_len)].mean(0)

    def desc(t):
        return original[ids(gemma_tokenizer, t, base_len)].mean(0)

    expected = {
        "zero": [torch.zeros_like(mean)] * 3,
        "mean": [mean] * 3,
        "subtoken_mean": [sub("▁당뇨병"), sub("▁환자"), sub("μg/dL")],
        "description_mean": [desc("diabetes mellitus"), desc("patient"), mean],
        "hybrid": [desc("diabetes mellitus"), desc("patient"), sub("μg/dL")],
    }
    if strategy == "random":
        assert not torch.allclose(weight[base_len], weight[base_len + 1])
        assert (
            abs(weight[base_len:].std().item() - original.std().item())
            < 0.5 * original.std().item()
        )
    else:
        for row, want in zip(weight[base_len : base_len + 3], expected[strategy]):
            torch.testing.assert_close(row, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(weight[:base_len], original)
    assert sum(info["methods"].values()) == 3
    if strategy == "description_mean":
        assert info["methods"] == {"description_mean": 2, "mean": 1}


def test_tied_output_embeddings_stay_tied(extended, gemma_tokenizer, tiny_gemma_dir):
    tokenizer, tokens, base_len = extended
    model = fresh(tiny_gemma_dir, len(tokenizer))
    info = E.apply_init(model, E.plan_init(tokens, "hybrid", gemma_tokenizer, base_len), base_len)
    assert info["tied"] and E.embeddings_tied(model)
    torch.testing.assert_close(
        model.lm_head.weight[base_len:], model.get_input_embeddings().weight[base_len:]
    )


def test_untied_output_rows_get_their_own_init(extended, gemma_tokenizer, tmp_path):
    tokenizer, tokens, base_len = extended
    model_dir = make_tiny_gemma(tmp_path / "untied", gemma_tokenizer, tied=False)
    model = fresh(model_dir, len(tokenizer))
    output_before = model.lm_head.weight[:base_len].clone()
    info = E.apply_init(
        model, E.plan_init(tokens, "subtoken_mean", gemma_tokenizer, base_len), base_len
    )
    assert not info["tied"]
    want = output_before[ids(gemma_tokenizer, " 환자", base_len)].mean(0)
    torch.testing.assert_close(model.lm_head.weight[base_len + 1], want)
    assert not torch.allclose(
        model.lm_head.weight[base_len + 1], model.get_input_embeddings().weight[base_len + 1]
    )


def test_resize_never_shrinks_padded_medgemma_matrix(gemma_tokenizer, tmp_path):
    model_dir = make_tiny_gemma(tmp_path / "padded", gemma_tokenizer, vocab_size=262208)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert E.resize_for(model, 262145 + 10) == 262208
    assert E.resize_for(model, 262145 + 100) == 262245


def test_vectorised_path_equals_prototype_loop(extended, gemma_tokenizer, tiny_gemma_dir):
    tokenizer, tokens, base_len = extended
    vectorised, looped = (
        fresh(tiny_gemma_dir, len(tokenizer)),
        fresh(tiny_gemma_dir, len(tokenizer)),
    )
    E.apply_init(
        vectorised, E.plan_init(tokens, "description_mean", gemma_tokenizer, base_len), base_len
    )
    E.apply_init_loop(looped, tokens, gemma_tokenizer, base_len)
    torch.testing.assert_close(
        vectorised.get_input_embeddings().weight, looped.get_input_embeddings().weight
    )
