"""Output calibration: known offsets are recovered, soft-cap included, and folded rows lower a real model's loss."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core import calibration as C
from medtok_dagster.core import embeddings as E
from medtok_dagster.core.distill import softcap
from medtok_dagster.core.lm_metrics import encode_plain
from medtok_dagster.core.training import block_labels, pack_blocks
from medtok_dagster_tests.conftest import MEDICAL_LINES, MEDICAL_NEW

NEW, LINES = MEDICAL_NEW, MEDICAL_LINES
HELD_OUT = [
    "당뇨병 환자의 혈당 관리가 중요하다.",
    "심근경색 환자는 혈당 조절도 필요하다.",
    "공복 혈당이 높아 당뇨병을 의심한다.",
    "급성 심근경색 후에 흉통을 호소한다.",
] * 3
"""Other sentences with the same words: the loss the folded rows are judged on."""
BASE = 10
"""Base-vocabulary size of the synthetic observations."""


def synthetic(offsets: torch.Tensor, cap: float | None, count: int = 8000) -> C.Observations:
    """Positions drawn from a model whose new-token logits are ``offsets`` higher than the observed ones."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(count, BASE, generator=generator)
    true_new = torch.randn(count, len(offsets), generator=generator) + offsets
    logits = torch.cat([softcap(base, cap), softcap(true_new, cap)], dim=-1)
    target = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
    is_new = target >= BASE
    return from_logits(
        true_new - offsets,
        torch.logsumexp(logits[:, :BASE], dim=-1),
        logits.gather(-1, target[:, None]).squeeze(-1).masked_fill(is_new, 0.0),
        torch.where(is_new, target - BASE, -1),
        cap,
    )


def from_logits(new_logits, base_lse, base_target, target, cap) -> C.Observations:
    """Observations whose new tokens' logits are ``new_logits`` exactly: hidden states read by identity rows."""
    rows = torch.eye(new_logits.shape[1])
    return C.Observations(new_logits, rows, base_lse, base_target, target, cap)


@pytest.mark.parametrize("cap", [None, 3.0])
def test_known_offsets_are_recovered_and_the_loss_falls_at_every_step(cap):
    truth = torch.tensor([1.5, -1.0, 0.5])
    obs = synthetic(truth, cap)
    config = C.CalibrationConfig(penalty=0.01, iterations=12)
    offsets, history = C.fit_offsets(obs, config)
    assert torch.allclose(offsets, truth, atol=0.15), offsets
    assert all(b <= a for a, b in zip(history, history[1:]))
    assert C.mean_nll(obs, offsets) < C.mean_nll(obs, torch.zeros(3)) - 0.05


def test_the_penalty_keeps_a_token_that_never_occurs_from_running_away():
    obs = synthetic(torch.tensor([0.0, 0.0, -30.0]), None)
    assert not (obs.target == 2).any(), "the third token is never a target"
    loose, _ = C.fit_offsets(obs, C.CalibrationConfig(penalty=1e-4, iterations=10))
    tight, _ = C.fit_offsets(obs, C.CalibrationConfig(penalty=100.0, iterations=10))
    assert loose[2] < -3 and -3 < tight[2] < 0
    assert loose[2] >= -10 * 1.0, "each Newton step moves an offset by at most max_step"


def test_the_bias_direction_moves_every_logit_by_about_one():
    """Hidden states vary much more along some directions than others; ``v`` leans on the steady ones."""
    generator = torch.Generator().manual_seed(1)
    spread = torch.linspace(0.01, 1.0, 16)
    hidden = torch.randn(500, 16, generator=generator) * spread + torch.randn(
        16, generator=generator
    )
    reach = hidden @ C.bias_direction(hidden)
    mean = hidden.mean(0)
    naive = hidden @ (mean / mean.dot(mean))
    assert abs(float(reach.mean()) - 1) < 0.01 and float(reach.std()) < 0.1
    assert float(reach.std()) < 0.5 * float(naive.std()), "least squares beats the mean direction"


def blocks_of(tokenizer, lines):
    return pack_blocks(encode_plain(tokenizer, lines), 16, tokenizer.bos_token_id, 1)


@torch.no_grad()
def loss_on(model, blocks, bos) -> float:
    ids = torch.tensor(blocks)
    return float(model(input_ids=ids, labels=block_labels(ids, bos)).loss)


def extended(gemma_tokenizer, taught_dir, strategy: str):
    """The taught tiny Gemma resized for NEW, new rows initialised by ``strategy``."""
    tokenizer = AutoTokenizer.from_pretrained(taught_dir)
    tokenizer.add_tokens(NEW)
    base_len = len(gemma_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(taught_dir).eval()
    E.resize_for(model, len(tokenizer))
    tokens = [E.NewToken(t, base_len + i, "ngram") for i, t in enumerate(NEW)]
    E.apply_init(model, E.plan_init(tokens, strategy, gemma_tokenizer, base_len), base_len)
    return model, tokenizer, base_len


CONFIG = C.CalibrationConfig(positions=400, block=16, validation_share=0.2)


def test_a_known_miscalibration_is_undone_and_held_out_loss_falls(
    gemma_tokenizer, taught_gemma_dir, tmp_path
):
    """Rows moved by -2 along the bias direction: calibration finds about +2 for every token it sees."""
    model, tokenizer, base_len = extended(gemma_tokenizer, taught_gemma_dir, "subtoken_mean")
    bos, lines = tokenizer.bos_token_id, blocks_of(tokenizer, LINES)
    observed = C.observe(model, lines, base_len, len(NEW), bos, 16)
    with torch.no_grad():
        model.get_input_embeddings().weight[base_len:] -= 2 * C.bias_direction(observed.hidden)
    rows_before = model.get_input_embeddings().weight[base_len:].detach().clone()
    held = blocks_of(tokenizer, HELD_OUT)
    before = loss_on(model, held, bos)

    result = C.calibrate(model, lines, base_len, len(NEW), bos, CONFIG)

    assert torch.equal(model.get_input_embeddings().weight[base_len:], rows_before), (
        "calibrate leaves the model alone"
    )
    seen = [NEW.index(t) for t in ("▁당뇨병", "▁혈당", "▁심근경색")]
    assert torch.all((result.offsets[seen] > 1.3) & (result.offsets[seen] < 2.7)), result.offsets
    assert abs(result.offsets[NEW.index("▁췌장염")]) < 0.5, "never seen: stays near zero"
    stats = result.stats
    assert stats["offset_scale"] == 1.0 and abs(stats["direction_reach_mean"] - 1) < 0.05
    assert stats["validation_nll_realised"] < stats["validation_nll_before"] - 0.05
    with torch.no_grad():
        model.get_input_embeddings().weight[base_len:] = result.rows
    assert loss_on(model, held, bos) < before - 0.02, "the folded rows help on unseen sentences"

    C.save(tmp_path, result)
    saved = load_file(str(tmp_path / C.OFFSETS_FILE))
    assert torch.equal(saved["offsets"], result.offsets) and saved["direction"].shape == (64,)


def test_offsets_that_would_hurt_through_the_input_side_are_shrunk(
    gemma_tokenizer, taught_gemma_dir
):
    """From the global mean the fit wants +10 per token; folded at full size that breaks how the rows are read."""
    model, tokenizer, base_len = extended(gemma_tokenizer, taught_gemma_dir, "mean")
    bos, held = tokenizer.bos_token_id, blocks_of(tokenizer, HELD_OUT)
    before = loss_on(model, held, bos)
    result = C.calibrate(model, blocks_of(tokenizer, LINES), base_len, len(NEW), bos, CONFIG)
    stats = result.stats
    assert stats["offset_scale"] < 1.0
    assert stats["validation_nll_realised"] < stats["validation_nll_before"]
    with torch.no_grad():
        model.get_input_embeddings().weight[base_len:] = result.rows
    assert loss_on(model, held, bos) < before


def test_a_config_that_cannot_score_anything_is_refused():
    with pytest.raises(ValueError, match="block ≥ 2"):
        C.CalibrationConfig(block=1)
    assert C.CalibrationConfig(positions=254, block=128).blocks_needed() == 2


def test_padding_rows_of_an_image_text_model_stay_in_the_normaliser(
    gemma_tokenizer, tiny_medgemma_dir
):
    """MedGemma pads its matrix to 262,208 rows: the new tokens fill only some of the padding."""
    model = AutoModelForCausalLM.from_pretrained(tiny_medgemma_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_medgemma_dir)
    tokenizer.add_tokens(NEW)
    base_len = len(gemma_tokenizer)
    assert E.resize_for(model, len(tokenizer)) > len(tokenizer), "padding rows remain"
    blocks = blocks_of(tokenizer, LINES)[:4]
    obs = C.observe(model, blocks, base_len, len(NEW), tokenizer.bos_token_id, 4)
    assert obs.rows.shape == (len(NEW), model.config.get_text_config().hidden_size)
    ids = torch.tensor(blocks[:1])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    new = slice(base_len, base_len + len(NEW))
    scored = ids[0, 1:] != tokenizer.bos_token_id
    expected = torch.logsumexp(torch.cat([logits[:, : new.start], logits[:, new.stop :]], -1), -1)
    expected = expected[scored]
    assert torch.allclose(obs.base_lse[: len(expected)], expected, atol=1e-4)
    result = C.calibrate(
        model, blocks, base_len, len(NEW), tokenizer.bos_token_id, C.CalibrationConfig(block=16)
    )
    assert result.rows.shape == (len(NEW), model.config.get_text_config().hidden_size)


@torch.no_grad()
def old_new_logits(model, blocks, bos: int, new: slice) -> torch.Tensor:
    """The new tokens' columns of the model's full logits at every scored position: what was kept."""
    columns = []
    for block in blocks:
        ids = torch.tensor([block])
        logits = model(input_ids=ids).logits[0, :-1].float()
        columns.append(logits[ids[0, 1:] != bos, new])
    return torch.cat(columns)


def test_observations_keep_no_new_token_logits_and_fit_as_the_full_logits_do(
    gemma_tokenizer, taught_gemma_dir
):
    """The new tokens' logits are recomputed per chunk from the hidden states and the rows: nothing
    positions × new tokens is kept, and the fit, losses and mass are those of the full logits."""
    model, tokenizer, base_len = extended(gemma_tokenizer, taught_gemma_dir, "subtoken_mean")
    bos, blocks = tokenizer.bos_token_id, blocks_of(tokenizer, LINES)
    obs = C.observe(model, blocks, base_len, len(NEW), bos, 16)
    width = model.config.get_text_config().hidden_size
    assert obs.rows.shape == (len(NEW), width) and obs.hidden.shape == (len(obs), width)
    assert [t.shape for t in (obs.base_lse, obs.base_target, obs.target)] == [(len(obs),)] * 3
    assert obs.cap is None, "the model's logits carry no soft-cap, so they are the raw new logits"
    full = old_new_logits(model, blocks, bos, slice(base_len, base_len + len(NEW)))
    old = from_logits(full, obs.base_lse, obs.base_target, obs.target, obs.cap)
    offsets, history = C.fit_offsets(obs, CONFIG)
    old_offsets, old_history = C.fit_offsets(old, CONFIG)
    torch.testing.assert_close(offsets, old_offsets, rtol=1e-4, atol=1e-5)
    assert history == pytest.approx(old_history, rel=1e-5)
    for measure in (C.mean_nll, C.new_token_mass):
        assert measure(obs, offsets) == pytest.approx(measure(old, offsets), rel=1e-5)
    loss, grad, curvature = C._newton_terms(obs, offsets)
    old_loss, old_grad, old_curvature = C._newton_terms(old, offsets)
    assert loss == pytest.approx(C.mean_nll(obs, offsets) * len(obs), rel=1e-6)
    assert loss == pytest.approx(old_loss, rel=1e-5)
    torch.testing.assert_close(grad, old_grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(curvature, old_curvature, rtol=1e-4, atol=1e-5)
    rows = model.get_output_embeddings().weight[base_len:].detach().clone()
    with torch.no_grad():
        model.get_output_embeddings().weight[base_len:] += 1.0
    assert torch.equal(obs.rows, rows), "the observations keep their own copy of the rows"
