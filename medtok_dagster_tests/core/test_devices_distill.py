"""Distillation and calibration keep every tensor on the model's device, checked without a GPU.

A CUDA model meets a host tensor only on a GPU machine, so the mix would crash there first. Here
the model's weights are moved to a *stand-in device*: each tensor keeps its real data on the host
but reports device ``meta``, and every operation that mixes it with a host tensor raises, as CUDA
does, except where CUDA accepts a host tensor (a 0-dim scalar, an index). Numbers are the real
ones, so each run is also compared with the same run on the host.

``FakeTensorMode`` with ``device="cuda"`` would be the obvious tool, but on a PyTorch built
without CUDA it cannot slice or index a fake CUDA tensor (``PyTorch is not linked with support for
cuda devices``) nor run backward through one, so it cannot run a model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from transformers import AutoTokenizer

from medtok_dagster.core import calibration as C
from medtok_dagster.core import distill as D
from medtok_dagster.core import fallback_rows as F
from medtok_dagster.core.lm_metrics import encode_plain
from medtok_dagster.core.training import pack_blocks
from medtok_dagster_tests.conftest import MEDICAL_LINES, MEDICAL_NEW, subtoken_mean_model

DEVICE = torch.device("meta")
ATEN = torch.ops.aten
INDEX_OPS = {
    ATEN.index.Tensor,
    ATEN.index_put.default,
    ATEN.index_put_.default,
    ATEN._index_put_impl_.default,
}
"""Operations whose index tensors may stay on the host (CUDA copies them over)."""


class DeviceMismatch(RuntimeError):
    """A host tensor met a tensor on the stand-in device."""


class OnDevice(torch.Tensor):
    """Host data that reports the stand-in device; every operation on it goes through :func:`_run`."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> OnDevice:
        return torch.Tensor._make_wrapper_subclass(
            cls,
            inner.shape,
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            device=DEVICE,
            requires_grad=inner.requires_grad,
        )

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"OnDevice({self.inner!r})"

    def tolist(self) -> list:
        return self.inner.tolist()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _Operations(TorchDispatchMode):
    """Sends tensors created with ``device="meta"`` (the model's device) to the stand-in device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _FromData(TorchFunctionMode):
    """Python data becomes a tensor below the dispatcher, where the stand-in would lose it.

    ``torch.tensor(data, device=...)`` is built on the host and moved; a list used as an index
    becomes a host index tensor (CUDA accepts those; built below the dispatcher it would hold none
    of the list's values).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and _on_device(kwargs.get("device")):
            return OnDevice(func(*args, **{**kwargs, "device": "cpu"}))
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            args = (args[0], _host_index(args[1]), *args[2:])
        return func(*args, **kwargs)


def _host_index(index: object) -> object:
    if isinstance(index, tuple):
        return tuple(_host_index(part) for part in index)
    return torch.tensor(index) if isinstance(index, list) else index


@contextmanager
def StandInDevice() -> Iterator[None]:  # noqa: N802 (used like the modes it combines)
    with _FromData(), _Operations():
        yield


def _on_device(device: object) -> bool:
    return device is not None and torch.device(device) == DEVICE


def _unwrap(value: object) -> object:
    return value.inner if isinstance(value, OnDevice) else value


def _refuse_host(func: object, value: object) -> None:
    if isinstance(value, OnDevice) or not isinstance(value, torch.Tensor):
        return
    if value.device.type == "cpu" and value.dim() == 0:
        return
    raise DeviceMismatch(
        f"{func}: a {value.device} tensor of shape {tuple(value.shape)} meets the model's device"
    )


def _has_data(func: object, value: object) -> None:
    """A plain ``meta`` tensor was built below the dispatcher and holds no data: a harness gap."""
    if (
        isinstance(value, torch.Tensor)
        and not isinstance(value, OnDevice)
        and value.device == DEVICE
    ):
        raise AssertionError(f"{func}: a tensor without data reached the stand-in device")


def _run(func, args: tuple, kwargs: dict):
    """Check the operands, run ``func`` on the host data, and put the results back on the device."""
    if func is ATEN._to_copy.default and "device" in kwargs:
        moved = func(_unwrap(args[0]), **{k: v for k, v in kwargs.items() if k != "device"})
        return OnDevice(moved) if _on_device(kwargs["device"]) else moved
    flat = tree_flatten((args, kwargs))[0]
    on_device = _on_device(kwargs.get("device")) or any(isinstance(t, OnDevice) for t in flat)
    if on_device:
        for value in flat:
            _has_data(func, value)
        checked = [args[0], *tree_flatten(args[2:])[0]] if func in INDEX_OPS else flat
        for value in checked:
            _refuse_host(func, value)
    inner_kwargs = tree_map(_unwrap, kwargs)
    if _on_device(inner_kwargs.get("device")):
        inner_kwargs["device"] = torch.device("cpu")
    out = func(*tree_map(_unwrap, args), **inner_kwargs)
    if not on_device:
        return out
    same = {id(t.inner): t for t in flat if isinstance(t, OnDevice)}

    def wrap(value: object) -> object:
        if isinstance(value, torch.Tensor) and not isinstance(value, OnDevice):
            return same[id(value)] if id(value) in same else OnDevice(value)
        return value

    return tree_map(wrap, out)


def to_device(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every parameter and buffer on the stand-in device (tied weights stay tied)."""
    moved: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None:
                if id(parameter) not in moved:
                    moved[id(parameter)] = torch.nn.Parameter(
                        OnDevice(parameter.data), requires_grad=parameter.requires_grad
                    )
                module._parameters[name] = moved[id(parameter)]
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = OnDevice(buffer)
    return model


def test_the_stand_in_device_refuses_host_tensors_as_cuda_does():
    with StandInDevice():
        weight = torch.arange(12.0).reshape(4, 3).to(DEVICE)
        assert weight.device == DEVICE and (weight * torch.tensor(2.0)).sum().item() == 132.0
        assert weight[torch.tensor([0, 2])].cpu().tolist() == [[0, 1, 2], [6, 7, 8]]
        with pytest.raises(DeviceMismatch):
            torch.cat([weight, torch.zeros(1, 3)])
        with pytest.raises(DeviceMismatch):
            weight @ torch.ones(3)


@pytest.fixture(scope="module")
def setup(gemma_tokenizer, tiny_gemma_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    tokenizer.add_tokens(MEDICAL_NEW)
    base_len = len(gemma_tokenizer)
    return tokenizer, list(range(base_len, len(tokenizer))), base_len


def fallback_problem() -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(40, 8, generator=generator)
    embedding = torch.randn(30, 8, generator=generator)
    pieces = [[i % 30, (7 * i + 3) % 30] if i % 9 else [] for i in range(40)]
    return start, embedding, pieces


def test_piece_features_and_the_fallback_fit_run_on_the_embeddings_device(monkeypatch):
    """A token without pieces included: its zero features are made on the device too."""
    monkeypatch.setattr(F, "MIN_R2", float("-inf"))
    start, embedding, pieces = fallback_problem()
    learned = start + 0.1 * torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    distilled, fallback = list(range(36)), list(range(36, 40))
    host_features = F.piece_features(start, embedding, pieces)
    host_rows, host_fit = F.predict_fallback(start, learned, host_features, distilled, fallback)
    with StandInDevice():
        features = F.piece_features(start.to(DEVICE), embedding.to(DEVICE), pieces)
        rows, fit = F.predict_fallback(
            start.to(DEVICE), learned.to(DEVICE), features, distilled, fallback
        )
        assert features.device == DEVICE and rows.device == DEVICE
        rows, features = rows.cpu(), features.cpu()
    assert torch.equal(features, host_features)
    torch.testing.assert_close(rows, host_rows)
    assert fit == host_fit


@pytest.mark.parametrize(
    ("mode", "cache_mb"),
    [("tied", D.TEACHER_CACHE_MB), ("untied", D.TEACHER_CACHE_MB), ("untied", 0)],
)
def test_distillation_runs_on_the_models_device_and_matches_the_host(
    setup, gemma_tokenizer, tiny_gemma_dir, monkeypatch, mode, cache_mb
):
    """The whole of ``distill``: teacher, projector (tied), output loss (untied), fallback fit;
    with the teacher's states cached on the host, or (budget 0) recomputed on the device per batch."""
    monkeypatch.setattr(F, "MIN_FITTED", 2)
    monkeypatch.setattr(F, "MIN_R2", float("-inf"))
    tokenizer, new_ids, base_len = setup
    config = D.DistillConfig(
        mode=mode,
        contexts_per_token=3,
        context_before=6,
        context_after=3,
        epochs=1,
        batch_size=4,
        learning_rate=1e-2,
        output_weight=1.0 if mode == "untied" else 0.0,
        min_contexts=1,
        teacher_cache_mb=cache_mb,
    )

    def run(model):
        return D.distill(
            model, tokenizer, gemma_tokenizer, MEDICAL_LINES[:5], new_ids, base_len, config
        )

    host = run(subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len))
    model = to_device(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    )
    with StandInDevice():
        result = run(model)
    assert result.input_rows.device.type == "cpu", "saved rows come back to the host"
    assert result.fallback_fit is not None, "the fallback fit ran"
    torch.testing.assert_close(result.input_rows, host.input_rows, rtol=1e-4, atol=1e-5)
    if mode == "untied":
        torch.testing.assert_close(result.output_rows, host.output_rows, rtol=1e-4, atol=1e-5)
    assert result.stats["frozen_directions"] == host.stats["frozen_directions"]
    assert result.stats["teacher_states_cached"] == (cache_mb > 0)


def test_teacher_states_stay_on_the_host_and_their_gram_on_the_device(
    setup, gemma_tokenizer, tiny_gemma_dir
):
    """The per-position states grow with the data, the width × width sum does not."""
    tokenizer, new_ids, base_len = setup
    pieces = D.piece_map(tokenizer, gemma_tokenizer, new_ids, base_len)
    plan = D.plan_contexts(
        encode_plain(tokenizer, MEDICAL_LINES[:5]),
        new_ids,
        pieces,
        base_len,
        tokenizer.bos_token_id,
        D.DistillConfig(contexts_per_token=3, context_before=6, context_after=3),
    )
    model = to_device(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    )
    with StandInDevice():
        targets = D.teacher_targets(model, plan.contexts, base_len, tokenizer.pad_token_id, 4)
        assert targets.gram.device == DEVICE and targets.gram.shape == (64, 64)
        projector = D.output_preserving_projector(targets, 0.9, DEVICE)
        assert projector.device == DEVICE
    assert {h.device.type for h in targets.hidden} == {"cpu"}
    assert targets.count == sum(len(c.student) for c in plan.contexts)


@pytest.fixture(scope="module")
def calibration_blocks(setup):
    tokenizer, _, _ = setup
    return pack_blocks(
        encode_plain(tokenizer, MEDICAL_LINES), 16, tokenizer.bos_token_id, tokenizer.eos_token_id
    )


def test_calibration_observes_and_fits_on_the_models_device(
    setup, gemma_tokenizer, tiny_gemma_dir, calibration_blocks
):
    tokenizer, new_ids, base_len = setup
    bos, count = tokenizer.bos_token_id, len(new_ids)
    host_model = subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    host_obs = C.observe(host_model, calibration_blocks, base_len, count, bos, 4)
    host_offsets, host_history = C.fit_offsets(host_obs, C.CalibrationConfig())
    model = to_device(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    )
    with StandInDevice():
        obs = C.observe(model, calibration_blocks, base_len, count, bos, 4)
        assert obs.rows.device == DEVICE and obs.hidden.device == DEVICE
        offsets, history = C.fit_offsets(obs, C.CalibrationConfig())
        direction = C.bias_direction(obs.hidden)
        assert offsets.device == DEVICE and direction.device == DEVICE
        offsets, direction = offsets.cpu(), direction.cpu()
    torch.testing.assert_close(offsets, host_offsets, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(direction, C.bias_direction(host_obs.hidden), rtol=1e-4, atol=1e-5)
    assert history == pytest.approx(host_history, rel=1e-5)


def test_calibrate_runs_on_the_models_device_and_matches_the_host(
    setup, gemma_tokenizer, tiny_gemma_dir, calibration_blocks
):
    tokenizer, new_ids, base_len = setup
    config = C.CalibrationConfig(positions=400, block=16, validation_share=0.2)

    def run(model):
        return C.calibrate(
            model, calibration_blocks, base_len, len(new_ids), tokenizer.bos_token_id, config
        )

    host = run(subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len))
    model = to_device(
        subtoken_mean_model(tiny_gemma_dir, gemma_tokenizer, tokenizer, new_ids, base_len)
    )
    with StandInDevice():
        result = run(model)
    assert result.rows.device.type == "cpu", "the calibrated rows come back to the host"
    torch.testing.assert_close(result.rows, host.rows, rtol=1e-3, atol=1e-4)
    assert result.stats["offset_scale"] == host.stats["offset_scale"]
