"""Distillation initialisation on a tiny Gemma 3 with the real tokenizer: both objectives improve, fallback, resume."""

import multiprocessing
import os
import random
import signal
import time

import pytest
import torch
from transformers import AutoTokenizer

from medtok_dagster.core import distill as D
from medtok_dagster.core.lm_metrics import encode_plain
from medtok_dagster_tests.conftest import MEDICAL_LINES, MEDICAL_NEW, subtoken_mean_model

NEW, LINES = MEDICAL_NEW, MEDICAL_LINES
"""No line contains 췌장염: its row has no context and must keep its starting value."""
CONFIG = D.DistillConfig(
    mode="untied",
    contexts_per_token=6,
    context_before=8,
    context_after=4,
    epochs=6,
    batch_size=4,
    learning_rate=1e-2,
    output_weight=1.0,
)


@pytest.fixture(scope="module")
def setup(gemma_tokenizer, tiny_gemma_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    tokenizer.add_tokens(NEW)
    base_len = len(gemma_tokenizer)
    return tokenizer, list(range(base_len, len(tokenizer))), base_len


def teacher(model, tokenizer, gemma_tokenizer, new_ids, base_len):
    """Every context of LINES and the frozen model's targets on them (the same for before and after)."""
    pieces = D.piece_map(tokenizer, gemma_tokenizer, new_ids, base_len)
    plan = D.plan_contexts(
        encode_plain(tokenizer, LINES), new_ids, pieces, base_len, tokenizer.bos_token_id, CONFIG
    )
    return plan, D.teacher_targets(model, plan.contexts, base_len, tokenizer.pad_token_id, 8)


def stacked_states(model, contexts, pad: int, batch_size: int = 8) -> torch.Tensor:
    """The teacher's states at every student position of every context, batched as the teacher pass batches."""
    with torch.no_grad():
        return torch.cat(
            [
                states[row, contexts[index].aligned].to(torch.bfloat16).float()
                for indices in D.length_batches([len(c.teacher) for c in contexts], batch_size)
                for states in [D.teacher_forward(model, [contexts[i] for i in indices], pad)]
                for row, index in enumerate(indices)
            ]
        )


def objectives(model, tokenizer, gemma_tokenizer, new_ids, base_len, input_rows, output_rows):
    """The hidden-state distance of ``input_rows`` and the output loss of ``output_rows`` on every context."""
    plan, targets = teacher(model, tokenizer, gemma_tokenizer, new_ids, base_len)
    pad, every = tokenizer.pad_token_id, range(len(plan.contexts))
    with torch.no_grad():
        hidden = float(
            D.input_loss(
                model,
                plan.contexts,
                every,
                input_rows,
                targets,
                D.batch_states(model, plan.contexts, every, targets, pad),
                base_len,
                pad,
            )
        )
    return hidden, D.mean_output_loss(model, plan.contexts, output_rows, targets, pad, 8)


def test_pieces_are_the_base_spelling_and_contexts_align_to_the_last_piece(setup, gemma_tokenizer):
    tokenizer, new_ids, base_len = setup
    pieces = dict(zip(new_ids, D.pieces_of(NEW, gemma_tokenizer)))
    assert pieces[new_ids[0]] == gemma_tokenizer(" 당뇨병", add_special_tokens=False).input_ids
    ids = encode_plain(tokenizer, ["그 당뇨병 환자"])[0]
    context = D.build_context(ids, 2, base_len, pieces)
    assert context.student == [2, *ids] and context.student[2] == new_ids[0]
    assert context.teacher[: 2 + len(pieces[new_ids[0]])] == [2, ids[0], *pieces[new_ids[0]]]
    assert context.aligned[2] == 1 + len(pieces[new_ids[0]]), (
        "the new token aligns with its last piece"
    )
    assert context.teacher[context.aligned[3]] == ids[2] and context.first_new == 2


def test_an_isolated_context_learns_only_its_own_occurrence(setup, gemma_tokenizer):
    tokenizer, new_ids, base_len = setup
    pieces = dict(zip(new_ids, D.pieces_of(NEW, gemma_tokenizer)))
    ids = encode_plain(tokenizer, ["그 당뇨병 혈당 환자"])[0]
    assert ids[1:3] == new_ids[:2]
    shared = D.build_context(ids, 2, base_len, pieces)
    isolated = D.build_context(ids, 2, base_len, pieces, keep=2)
    assert [t for _, t, _ in shared.targets] == [0, 1]
    assert [t for _, t, _ in isolated.targets] == [1], "only the kept occurrence is learned"
    assert isolated.teacher == shared.teacher, "the teacher reads the same pieces either way"
    spelled = pieces[new_ids[0]]
    assert isolated.student == [2, ids[0], *spelled, new_ids[1], *ids[3:]]
    assert isolated.first_new == 2 + len(spelled)
    assert isolated.aligned[: len(spelled) + 2] == list(range(len(spelled) + 2))


def test_a_row_taught_by_too_few_windows_is_not_kept(setup, gemma_tokenizer):
    tokenizer, new_ids, base_len = setup
    pieces = dict(zip(new_ids, D.pieces_of(NEW, gemma_tokenizer)))
    encoded = encode_plain(tokenizer, [*LINES, "그는 췌장염 진단을 받았다."])
    rare = new_ids[NEW.index("▁췌장염")]

    def plan(min_contexts):
        config = D.DistillConfig(**{**CONFIG.__dict__, "min_contexts": min_contexts})
        return D.plan_contexts(encoded, new_ids, pieces, base_len, 2, config)

    assert rare in plan(1).distilled, "one line teaches it once"
    strict = plan(2)
    assert rare not in strict.distilled and rare in strict.fallback(new_ids)
    assert set(new_ids) - {rare} <= strict.distilled


def test_batches_group_similar_lengths_and_cover_every_context_once():
    lengths = [3, 40, 5, 38, 4, 39, 6, 41]
    batches = D.length_batches(lengths, 4, random.Random(1))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert spans == [(3, 6), (38, 41)], "short windows are not padded to the long ones"
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1
    orders = {tuple(map(tuple, D.length_batches(lengths, 4, random.Random(s)))) for s in range(8)}
    assert len(orders) > 1, "epochs see the batches in different orders"


def test_distillation_lowers_the_hidden_state_distance_and_the_output_loss(
    setup, gemma_tokenizer, taught_gemma_dir
):
    tokenizer, new_ids, base_len = setup
    model = subtoken_mean_model(taught_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    start = model.get_input_embeddings().weight[base_len:].detach().clone()
    result = D.distill(model, tokenizer, gemma_tokenizer, LINES, new_ids, base_len, CONFIG)
    hidden_before, output_before = objectives(
        model, tokenizer, gemma_tokenizer, new_ids, base_len, start, start
    )
    hidden_after, output_after = objectives(
        model, tokenizer, gemma_tokenizer, new_ids, base_len, result.input_rows, result.output_rows
    )
    assert output_before > 0.02, (
        "the taught model predicts the pieces, so a mean-initialised row misses them"
    )
    assert hidden_after < 0.8 * hidden_before
    assert output_after < 0.8 * output_before
    assert result.history[-1]["step"] == result.steps


def test_a_tied_row_learns_its_input_side_while_its_logits_stay_put(
    setup, gemma_tokenizer, taught_gemma_dir
):
    """Freezing the directions the teacher's hidden states occupy keeps h·row (the new token's logit) nearly fixed."""
    tokenizer, new_ids, base_len = setup
    model = subtoken_mean_model(taught_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    start = model.get_input_embeddings().weight[base_len:].detach().clone()
    plan, _ = teacher(model, tokenizer, gemma_tokenizer, new_ids, base_len)
    hidden = stacked_states(model, plan.contexts, tokenizer.pad_token_id)
    moved, learned = {}, {}
    for keep in (0.0, 0.9, 0.99):
        config = D.DistillConfig(
            mode="tied",
            keep_output=keep,
            contexts_per_token=6,
            context_before=8,
            context_after=4,
            epochs=6,
            batch_size=4,
            learning_rate=1e-2,
        )
        result = D.distill(model, tokenizer, gemma_tokenizer, LINES, new_ids, base_len, config)
        moved[keep] = (hidden @ (result.input_rows - start).T).abs().mean().item()
        learned[keep] = objectives(
            model, tokenizer, gemma_tokenizer, new_ids, base_len, result.input_rows, start
        )[0]
        assert result.output_rows is None and (result.stats["frozen_directions"] > 0) == (keep > 0)
    assert moved[0.99] < moved[0.9] < 0.6 * moved[0.0], moved
    hidden_before = objectives(model, tokenizer, gemma_tokenizer, new_ids, base_len, start, start)[
        0
    ]
    assert learned[0.9] < 0.9 * hidden_before, "the input side still learns"


def test_rows_without_contexts_fall_back_to_their_starting_value(
    setup, gemma_tokenizer, tiny_gemma_dir
):
    tokenizer, new_ids, base_len = setup
    model = subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    start = model.get_input_embeddings().weight[base_len:].detach().clone()
    result = D.distill(
        model,
        tokenizer,
        gemma_tokenizer,
        LINES,
        new_ids,
        base_len,
        D.DistillConfig(**{**CONFIG.__dict__, "mode": "tied", "output_weight": 0.0}),
    )
    no_context = new_ids[NEW.index("▁췌장염")]
    assert result.fallback == [no_context] and no_context not in result.distilled
    assert result.fallback_fit is None and result.fallback_rule() == "subtoken_mean", (
        "four distilled rows are too few to fit a predictor for the fifth"
    )
    assert torch.equal(result.input_rows[no_context - base_len], start[no_context - base_len])
    assert not torch.equal(result.input_rows[0], start[0])
    D.apply(model, result, base_len)
    assert torch.equal(model.get_input_embeddings().weight[base_len:], result.input_rows)
    assert torch.equal(model.lm_head.weight[base_len:], result.input_rows), (
        "tied: one row reads and predicts"
    )


def test_rows_not_reached_get_the_change_predicted_from_the_distilled_ones(
    setup, gemma_tokenizer, tiny_gemma_dir, monkeypatch
):
    """With the fit's minimums lowered to what four distilled rows allow, the fifth row moves too."""
    from medtok_dagster.core import fallback_rows

    monkeypatch.setattr(fallback_rows, "MIN_FITTED", 2)
    monkeypatch.setattr(fallback_rows, "MIN_R2", float("-inf"))
    tokenizer, new_ids, base_len = setup
    model = subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    start = model.get_input_embeddings().weight[base_len:].detach().clone()
    settings = {**CONFIG.__dict__, "mode": "tied", "output_weight": 0.0}
    result = D.distill(
        model, tokenizer, gemma_tokenizer, LINES, new_ids, base_len, D.DistillConfig(**settings)
    )
    no_context = new_ids[NEW.index("▁췌장염")] - base_len
    assert result.fallback_fit is not None and result.fallback_fit.predicted == 1
    assert not torch.equal(result.input_rows[no_context], start[no_context])
    assert "ridge" in result.fallback_rule()
    plain = D.distill(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len),
        tokenizer,
        gemma_tokenizer,
        LINES,
        new_ids,
        base_len,
        D.DistillConfig(**{**settings, "predict_fallback": False}),
    )
    assert torch.equal(plain.input_rows[no_context], start[no_context])
    assert torch.equal(plain.input_rows[:no_context], result.input_rows[:no_context]), (
        "the prediction touches only rows distillation did not reach"
    )


def test_rows_saved_and_loaded_round_trip_and_refuse_another_tokenizer(
    setup, gemma_tokenizer, tiny_gemma_dir, tmp_path
):
    tokenizer, new_ids, base_len = setup
    model = subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    result = D.distill(
        model,
        tokenizer,
        gemma_tokenizer,
        LINES,
        new_ids,
        base_len,
        D.DistillConfig(epochs=1, batch_size=8, contexts_per_token=2),
    )
    D.save_rows(tmp_path, result, "local:base")
    loaded = D.load_rows(tmp_path, len(new_ids), "local:base")
    assert torch.equal(loaded.input_rows, result.input_rows) and loaded.fallback == result.fallback
    with pytest.raises(ValueError, match="new tokens"):
        D.load_rows(tmp_path, len(new_ids) + 1, "local:base")


def _run_in_child(tiny_gemma_dir, gemma_dir, checkpoint_dir, config):
    torch.set_num_threads(1)
    gemma = AutoTokenizer.from_pretrained(gemma_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    tokenizer.add_tokens(NEW)
    new_ids = list(range(len(gemma), len(tokenizer)))
    model = subtoken_mean_model(tiny_gemma_dir, gemma, tokenizer, new_ids, len(gemma))
    D.distill(
        model,
        tokenizer,
        gemma,
        LINES * 4,
        new_ids,
        len(gemma),
        config,
        checkpoint_dir=checkpoint_dir,
    )


def test_a_killed_distillation_resumes_from_its_checkpoint(
    setup, gemma_tokenizer, gemma_dir, tiny_gemma_dir, tmp_path
):
    tokenizer, new_ids, base_len = setup
    config = D.DistillConfig(
        contexts_per_token=24,
        context_before=8,
        context_after=4,
        epochs=40,
        batch_size=2,
        learning_rate=1e-2,
        checkpoint_every=2,
    )
    checkpoint = tmp_path / "checkpoint"
    child = multiprocessing.get_context("fork").Process(
        target=_run_in_child, args=(tiny_gemma_dir, gemma_dir, checkpoint, config)
    )
    child.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (checkpoint / D.STATE_FILE).exists():
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL and (checkpoint / D.STATE_FILE).exists()
    torch.set_num_threads(1)
    resumed = D.distill(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len),
        tokenizer,
        gemma_tokenizer,
        LINES * 4,
        new_ids,
        base_len,
        config,
        checkpoint_dir=checkpoint,
    )
    assert 0 < resumed.resumed_from < resumed.steps
    fresh = D.distill(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len),
        tokenizer,
        gemma_tokenizer,
        LINES * 4,
        new_ids,
        base_len,
        config,
    )
    torch.testing.assert_close(resumed.input_rows, fresh.input_rows, rtol=1e-4, atol=1e-5)
    assert [h["step"] for h in resumed.history] == list(range(1, resumed.steps + 1))


def test_a_checkpoint_of_another_base_model_is_not_resumed(
    setup, gemma_tokenizer, tiny_gemma_dir, tmp_path
):
    tokenizer, new_ids, base_len = setup
    config = D.DistillConfig(epochs=1, batch_size=8, contexts_per_token=2, checkpoint_every=1)

    def run(base):
        return D.distill(
            subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len),
            tokenizer,
            gemma_tokenizer,
            LINES,
            new_ids,
            base_len,
            config,
            checkpoint_dir=tmp_path,
            base_identity=base,
        )

    first = run("local:a")
    assert first.resumed_from == 0 and first.steps > 0
    assert run("local:a").resumed_from == first.steps, "the same base resumes its checkpoint"
    assert run("local:b").resumed_from == 0, "another base starts afresh"


def saved_rows(directory, rows: int = 5, width: int = 64) -> D.DistillResult:
    result = D.DistillResult(torch.randn(rows, width), None, [0, 1], [2, 3, 4], [0, 1], 0, 0, 0)
    D.save_rows(directory, result, "local:a")
    return result


def test_rows_of_another_base_model_are_refused_naming_the_file_and_both_bases(tmp_path):
    saved_rows(tmp_path)
    assert D.load_rows(tmp_path, 5, "local:a").input_rows.shape == (5, 64)
    with pytest.raises(D.DistilledRowsError) as refused:
        D.load_rows(tmp_path, 5, "local:b")
    message = str(refused.value)
    assert str(tmp_path / D.IDS_FILE) in message and "'local:a'" in message
    assert "'local:b'" in message and "re-materialize distilled_embeddings" in message


def test_damaged_rows_are_refused_naming_the_file_and_what_is_wrong(tmp_path):
    from safetensors.torch import save_file

    result = saved_rows(tmp_path)
    rows_file, ids_file = tmp_path / D.ROWS_FILE, tmp_path / D.IDS_FILE
    with pytest.raises(
        D.DistilledRowsError, match="rows 64 wide, but the model's embeddings are 32"
    ):
        D.check_width(tmp_path, result, 32)
    intact = rows_file.read_bytes()
    rows_file.write_bytes(intact[: len(intact) - 100])
    with pytest.raises(D.DistilledRowsError, match=f"{rows_file}: truncated"):
        D.load_rows(tmp_path, 5, "local:a")
    save_file({"output": torch.zeros(5, 64)}, str(rows_file))
    with pytest.raises(D.DistilledRowsError, match=f'{rows_file}: no 2-D tensor "input"'):
        D.load_rows(tmp_path, 5, "local:a")
    rows_file.write_bytes(intact)
    ids_file.write_text('{"distilled": [0, 1], ')
    with pytest.raises(D.DistilledRowsError, match=f"{ids_file}:1: malformed JSON"):
        D.load_rows(tmp_path, 5, "local:a")
    ids_file.write_text('{"distilled": [0, 1]}')
    with pytest.raises(
        D.DistilledRowsError, match=f"{ids_file}: no fallback, selected, base_model"
    ):
        D.load_rows(tmp_path, 5, "local:a")
    ids_file.unlink()
    with pytest.raises(D.DistilledRowsError, match=f"{ids_file}: missing"):
        D.load_rows(tmp_path, 5, "local:a")


def test_the_projector_from_the_gram_is_the_one_from_the_stacked_states(
    setup, gemma_tokenizer, tiny_gemma_dir
):
    """Accumulating ``hᵀh`` per batch changes only rounding, not which directions are frozen."""
    tokenizer, new_ids, base_len = setup
    model = subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    plan, targets = teacher(model, tokenizer, gemma_tokenizer, new_ids, base_len)
    hidden = stacked_states(model, plan.contexts, tokenizer.pad_token_id)
    assert targets.count == len(hidden)
    torch.testing.assert_close(
        targets.gram.float() / targets.count, hidden.T @ hidden / len(hidden)
    )
    assert targets.scale == pytest.approx(float(hidden.pow(2).sum(-1).mean()), rel=1e-5)
    projector = D.output_preserving_projector(targets, 0.9, torch.device("cpu"))
    assert projector.shape == (64, 64) and 0 < float(64 - torch.trace(projector)) < 64


def test_the_teacher_keeps_only_the_states_the_losses_read(setup, gemma_tokenizer, tiny_gemma_dir):
    """From the first new token on, and from the position predicting it with the output objective;
    over the budget none, and each batch recomputes the same states."""
    tokenizer, new_ids, base_len = setup
    model = subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    plan, _ = teacher(model, tokenizer, gemma_tokenizer, new_ids, base_len)
    pad, every = tokenizer.pad_token_id, range(len(plan.contexts))
    positions = sum(len(c.student) for c in plan.contexts)
    for with_output in (False, True):
        cached = D.teacher_targets(model, plan.contexts, base_len, pad, 8, with_output)
        lead = int(with_output)
        assert [len(h) for h in cached.hidden] == [
            len(c.student) - c.first_new + lead for c in plan.contexts
        ]
        size = D.cache_bytes(plan.contexts, lead, 64)
        assert size == sum(h.numel() * h.element_size() for h in cached.hidden)
        assert size < positions * 64 * 2, (
            "the window's context before its first new token is not kept"
        )
        recompute = D.teacher_targets(model, plan.contexts, base_len, pad, 8, with_output, 0)
        assert recompute.hidden is None, "over the budget no state is kept"
        torch.testing.assert_close(recompute.gram, cached.gram)
        assert recompute.count == cached.count == positions
        for name in ("context", "position", "next_row", "lse", "logp"):
            assert torch.equal(getattr(recompute, name), getattr(cached, name)), name
        recomputed = D.batch_states(model, plan.contexts, every, recompute, pad)
        for index, states in D.batch_states(model, plan.contexts, every, cached, pad).items():
            torch.testing.assert_close(recomputed[index], states, rtol=1e-2, atol=1e-2)


def test_recomputing_the_teacher_per_batch_learns_the_rows_the_cache_does(
    setup, gemma_tokenizer, taught_gemma_dir
):
    """Budget 0: the projector, the input and the output losses all read recomputed states."""
    tokenizer, new_ids, base_len = setup
    settings = {**CONFIG.__dict__, "mode": "tied", "output_weight": 0.5, "epochs": 3}
    results = {}
    for budget in (D.TEACHER_CACHE_MB, 0):
        config = D.DistillConfig(**{**settings, "teacher_cache_mb": budget})
        model = subtoken_mean_model(taught_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
        results[budget] = D.distill(
            model, tokenizer, gemma_tokenizer, LINES, new_ids, base_len, config
        )
    cached, recomputed = results[D.TEACHER_CACHE_MB], results[0]
    assert cached.stats["teacher_states_cached"] and not recomputed.stats["teacher_states_cached"]
    assert 0 < cached.stats["teacher_states_mb"] == recomputed.stats["teacher_states_mb"] < 1
    torch.testing.assert_close(recomputed.input_rows, cached.input_rows, rtol=1e-4, atol=1e-5)
    for name in ("output_loss_before", "output_loss_after", "frozen_directions"):
        assert recomputed.stats[name] == pytest.approx(cached.stats[name], abs=1e-3), name
    assert D.DistillConfig(teacher_cache_mb=0).key() == D.DistillConfig().key(), (
        "the budget changes nothing learned: a checkpoint resumes under another one"
    )
