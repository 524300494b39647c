"""Output calibration: one logit offset per new token, fitted on training text and folded into its row.

Distillation teaches a new row how the model should *read* the token; how often the model
*predicts* it is another matter. Gemma ties its output projection to its input embeddings, so a new
row is also the vector whose dot product with the final hidden state is the token's logit, and
after distillation those logits are still off: measured on the demo's training blocks, the new
tokens held 43% of the probability at positions whose next token is a base token, and each new
token is too likely or too unlikely in a way that depends mostly on the token, not on the context.

So each new token ``k`` gets an offset ``b_k`` that minimises the extended model's next-token loss
on training blocks (every position scored, base and new targets alike), with a small L2 penalty.
The base vocabulary's logits and log-normaliser are fixed, so after one forward pass the loss is a
cheap function of ``b`` and a few diagonal Newton steps fit it for all new tokens at once.

A tied row has no bias, so the offsets are folded into the rows: ``row_k += b_k · v``, where ``v``
is the least-squares direction with ``h · v ≈ 1`` for the observed final hidden states ``h``. The
logit of token ``k`` then moves by ``b_k (h · v) ≈ b_k`` wherever the model predicts, and the adapter
and the merged model keep their size (no untied output layer). The input side moves too, so the
folded rows are checked through the model on blocks the fit did not see, and shrunk if they hurt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medtok_dagster.core.distill import autocast, decoder_of, softcap, softcap_of
from medtok_dagster.core.lm_metrics import model_device

OFFSETS_FILE = "logit_offsets.safetensors"
SCALES = (1.0, 0.5, 0.25)
"""Shares of the fitted offsets tried, largest first, until the model's own held-out loss falls."""
CHUNK = 4096
"""Positions per step of the fitting loops: bounds the ``positions × new tokens`` logits and temporaries."""
OBSERVE_CHUNK = 1024
"""Positions per output-layer product while observing: bounds the ``positions × vocabulary`` logits (1 GB)."""


@dataclass(frozen=True)
class CalibrationConfig:
    """How many positions to observe and how the offsets are fitted."""

    positions: int = 20_000
    """Scored positions (training blocks × (block - 1)); 0 turns calibration off."""
    block: int = 128
    """Tokens per block, ``<bos>`` first, as Phase-0 trains."""
    penalty: float = 0.3
    """L2 penalty on the offsets, in units of summed loss (measured best among 0.01–1,000, README)."""
    iterations: int = 10
    batch_size: int = 16
    validation_share: float = 0.1
    """Share of the blocks kept out of the fit: the folded rows are checked and reported on them."""
    max_step: float = 1.0
    """Largest change of one offset per Newton step (nats)."""

    def __post_init__(self) -> None:
        if self.positions < 0 or self.block < 2 or self.iterations < 1:
            raise ValueError(
                f"calibration needs positions ≥ 0, block ≥ 2 and iterations ≥ 1, got {asdict(self)}"
            )
        if not 0 <= self.validation_share < 1:
            raise ValueError(f"validation_share must be in [0, 1), got {self.validation_share}")

    def blocks_needed(self) -> int:
        """Blocks to observe: each scores ``block - 1`` positions (``<bos>`` is never a target)."""
        return math.ceil(self.positions / (self.block - 1))


@dataclass
class Observations:
    """What the frozen model does at each scored position, reduced to what the offsets change.

    ``hidden`` is the final hidden state at each position and ``rows`` a float32 copy of the new
    tokens' output rows: the new tokens' logits are recomputed from them per chunk
    (:meth:`new_logits`), since kept they would grow as positions × new tokens. ``base_lse`` is the
    log-normaliser over the base vocabulary and ``base_target`` the target's logit where the target
    is a base token (``target`` is then -1; otherwise it is the new token's row). Every tensor
    lives on the model's device, where the fit runs in chunks of :data:`CHUNK` positions.
    """

    hidden: torch.Tensor
    rows: torch.Tensor
    base_lse: torch.Tensor
    base_target: torch.Tensor
    target: torch.Tensor
    cap: float | None = None

    def __len__(self) -> int:
        return len(self.target)

    def part(self, select: slice) -> Observations:
        """The positions ``select`` (the rows are shared)."""
        return Observations(
            self.hidden[select],
            self.rows,
            self.base_lse[select],
            self.base_target[select],
            self.target[select],
            self.cap,
        )

    def new_logits(self) -> torch.Tensor:
        """The new tokens' logits before any soft-cap (positions × new tokens, float32): call on a chunk."""
        return self.hidden @ self.rows.T


@torch.no_grad()
def observe(
    model: Any,
    blocks: Sequence[Sequence[int]],
    base_len: int,
    new_count: int,
    bos: int,
    batch_size: int,
) -> Observations:
    """Run ``model`` (resized, new rows in place) over ``blocks`` and keep every scored position.

    Rows ``base_len`` to ``base_len + new_count`` are the new tokens; every other row of the output
    layer (MedGemma's padding rows too) belongs to the fixed normaliser. The observations stay on
    the model's device: the fit reads them a few dozen times, and a copy to the host and back
    would cost more than the fit.
    """
    decoder, device = decoder_of(model), model_device(model)
    head = model.get_output_embeddings().weight
    end = base_len + new_count
    cap = softcap_of(model)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("h", "lse", "base", "target")}
    for start in range(0, len(blocks), batch_size):
        ids = torch.tensor([list(b) for b in blocks[start : start + batch_size]], device=device)
        with autocast(device):
            states = decoder(input_ids=ids, use_cache=False).last_hidden_state
        hidden = states[:, :-1].reshape(-1, states.shape[-1]).float()
        targets = ids[:, 1:].reshape(-1)
        keep = targets != bos
        hidden, targets = hidden[keep], targets[keep]
        for first in range(0, len(targets), OBSERVE_CHUNK):
            h, t = hidden[first : first + OBSERVE_CHUNK], targets[first : first + OBSERVE_CHUNK]
            with autocast(device):
                base_logits = softcap((h @ head[:base_len].T).float(), cap)
                padding = softcap((h @ head[end:].T).float(), cap)
            lse = torch.logsumexp(torch.cat([base_logits, padding], dim=-1), dim=-1)
            is_new = (t >= base_len) & (t < end)
            parts["h"].append(h)
            parts["lse"].append(lse)
            parts["base"].append(
                base_logits.gather(-1, t.clamp(max=base_len - 1)[:, None])
                .squeeze(-1)
                .masked_fill(is_new, 0.0)
            )
            parts["target"].append(torch.where(is_new, t - base_len, -1))
    if not parts["target"]:
        raise ValueError("calibration needs at least one block of training text")
    return Observations(
        torch.cat(parts["h"]),
        head[base_len:end].detach().float().clone(),
        torch.cat(parts["lse"]),
        torch.cat(parts["base"]),
        torch.cat(parts["target"]),
        cap,
    )


def _chunks(count: int) -> list[slice]:
    return [slice(i, min(i + CHUNK, count)) for i in range(0, count, CHUNK)]


def _losses(
    obs: Observations, new_logits: torch.Tensor, shift: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position loss (nats) with ``new_logits`` (of ``obs``) moved by ``shift``, and the new tokens' log-probs."""
    z = softcap(new_logits + shift, obs.cap)
    total = torch.logaddexp(obs.base_lse, torch.logsumexp(z, dim=-1))
    is_new = obs.target >= 0
    target_logit = torch.where(
        is_new, z.gather(-1, obs.target.clamp(min=0)[:, None]).squeeze(-1), obs.base_target
    )
    return total - target_logit, z - total[:, None]


def mean_nll(obs: Observations, offsets: torch.Tensor) -> float:
    """Mean next-token loss (nats) at the observed positions with the offsets added to the new logits."""
    total = 0.0
    for part in (obs.part(s) for s in _chunks(len(obs))):
        total += float(_losses(part, part.new_logits(), offsets[None, :])[0].sum())
    return total / max(len(obs), 1)


def new_token_mass(obs: Observations, offsets: torch.Tensor) -> float:
    """Mean probability the new tokens get at positions whose target is a base token."""
    total, count = 0.0, 0
    for part in (obs.part(s) for s in _chunks(len(obs))):
        base = part.target < 0
        logprobs = _losses(part, part.new_logits(), offsets[None, :])[1]
        total += float(logprobs[base].exp().sum())
        count += int(base.sum())
    return total / max(count, 1)


def _penalised(loss: float, offsets: torch.Tensor, penalty: float) -> float:
    return loss + 0.5 * penalty * float(offsets.pow(2).sum())


def _newton_terms(
    obs: Observations, offsets: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Summed loss, gradient and diagonal Gauss-Newton curvature in the offsets (soft-cap aware).

    One pass over the observations recomputes every chunk's new logits (a positions × width ×
    new tokens product), so the fit gets a trial's loss and its Newton terms from the same pass.
    """
    total = 0.0
    grad, curvature = torch.zeros_like(offsets), torch.zeros_like(offsets)
    for part in (obs.part(s) for s in _chunks(len(obs))):
        new_logits = part.new_logits()
        losses, logprobs = _losses(part, new_logits, offsets[None, :])
        total += float(losses.sum())
        p = logprobs.exp()
        slope = (
            1 - torch.tanh((new_logits + offsets) / part.cap).pow(2)
            if part.cap
            else torch.ones_like(p)
        )
        seen = part.target >= 0
        hits = torch.zeros_like(p)
        hits[seen.nonzero().squeeze(-1), part.target[seen]] = 1.0
        grad += ((p - hits) * slope).sum(0)
        curvature += (p * (1 - p) * slope.pow(2)).sum(0)
    return total, grad, curvature


def fit_offsets(obs: Observations, config: CalibrationConfig) -> tuple[torch.Tensor, list[float]]:
    """Offsets minimising summed loss + ``penalty/2 ‖b‖²`` by damped diagonal Newton, and the objective per step.

    Each token's step is its gradient over its curvature, capped at ``max_step``; a step that would
    raise the objective is halved until it does not (the diagonal ignores how tokens compete).
    Each trial is one pass (:func:`_newton_terms`), which also gives the next step if it is taken.
    """
    offsets = torch.zeros(len(obs.rows), device=obs.rows.device)
    loss, grad, curvature = _newton_terms(obs, offsets)
    history = [_penalised(loss, offsets, config.penalty)]
    for _ in range(config.iterations):
        step = ((grad + config.penalty * offsets) / (curvature + config.penalty)).clamp(
            -config.max_step, config.max_step
        )
        for _ in range(4):
            trial = offsets - step
            loss, trial_grad, trial_curvature = _newton_terms(obs, trial)
            value = _penalised(loss, trial, config.penalty)
            if value <= history[-1]:
                offsets, grad, curvature = trial, trial_grad, trial_curvature
                history.append(value)
                break
            step = step / 2
        else:
            break
    return offsets, [h / max(len(obs), 1) for h in history]


def bias_direction(hidden: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """The direction ``v`` with ``h · v ≈ 1`` for the rows of ``hidden`` (ridge-regularised least squares).

    Adding ``b · v`` to a tied row adds about ``b`` to its logit at every position, which is what a
    bias would do; Gemma's final norm keeps the hidden states' component along ``v`` steady.
    """
    gram = hidden.T @ hidden / len(hidden)
    scale = float(torch.trace(gram)) / gram.shape[0]
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * scale * eye, hidden.mean(0)).float()


@dataclass
class Calibration:
    """Fitted offsets, the direction they are folded along, the calibrated rows, and what they did."""

    offsets: torch.Tensor
    direction: torch.Tensor
    rows: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)


@contextmanager
def rows_in(model: Any, base_len: int, rows: torch.Tensor) -> Iterator[None]:
    """``model`` with ``rows`` as its new output rows (and input rows, when tied) until the block ends."""
    head = model.get_output_embeddings().weight
    new = slice(base_len, base_len + len(rows))
    kept = head[new].detach().clone()
    with torch.no_grad():
        head[new] = rows.to(head.device, head.dtype)
    try:
        yield
    finally:
        with torch.no_grad():
            head[new] = kept


def calibrate(
    model: Any,
    blocks: Sequence[Sequence[int]],
    base_len: int,
    new_count: int,
    bos: int,
    config: CalibrationConfig,
    log: Callable[[str], None] = lambda _: None,
) -> Calibration:
    """Fit offsets on ``blocks`` (training text) and return the new rows with them folded in.

    The last ``validation_share`` of the blocks is kept out of the fit. On them the folded rows are
    checked through the model itself, where a tied row's input side moves too; if they do not lower
    the loss there, the offsets are halved until they do (or dropped). The model is left unchanged.
    Observing and fitting run on the model's device; the returned tensors are on the host.
    """
    started = time.monotonic()
    held_count = round(len(blocks) * config.validation_share) if len(blocks) > 1 else 0
    fit_blocks, held_blocks = blocks[: len(blocks) - held_count], blocks[len(blocks) - held_count :]
    fit = observe(model, fit_blocks, base_len, new_count, bos, config.batch_size)
    offsets, history = fit_offsets(fit, config)
    direction = bias_direction(fit.hidden)
    start = (
        model.get_output_embeddings()
        .weight[base_len : base_len + new_count]
        .detach()
        .float()
        .clone()
    )
    stats: dict[str, float] = {
        "blocks": len(blocks),
        "fit_positions": len(fit),
        "new_token_targets": round(float((fit.target >= 0).float().mean()), 4),
        "fit_nll_before": round(history[0], 4),
        "fit_nll_after": round(mean_nll(fit, offsets), 4),
        "new_token_mass_before": round(new_token_mass(fit, torch.zeros_like(offsets)), 4),
        "new_token_mass_after": round(new_token_mass(fit, offsets), 4),
    }
    scale = 1.0
    if held_blocks:
        held = observe(model, held_blocks, base_len, new_count, bos, config.batch_size)
        before = mean_nll(held, torch.zeros_like(offsets))
        for scale in SCALES:
            with rows_in(model, base_len, start + scale * offsets[:, None] * direction[None, :]):
                realised = mean_nll(
                    observe(model, held_blocks, base_len, new_count, bos, config.batch_size),
                    torch.zeros_like(offsets),
                )
            if realised < before:
                break
        else:
            scale, realised = 0.0, before
        reach = held.hidden @ direction
        stats |= {
            "validation_positions": len(held),
            "validation_nll_before": round(before, 4),
            "validation_nll_offsets": round(mean_nll(held, offsets), 4),
            "validation_nll_realised": round(realised, 4),
            "direction_reach_mean": round(float(reach.mean()), 4),
            "direction_reach_std": round(float(reach.std()), 4) if len(reach) > 1 else 0.0,
        }
    offsets = offsets * scale
    stats |= {
        "offset_scale": scale,
        "offset_mean": round(float(offsets.mean()), 4),
        "offset_min": round(float(offsets.min()), 4),
        "offset_max": round(float(offsets.max()), 4),
        "seconds": round(time.monotonic() - started, 1),
    }
    log(
        f"calibration: held-out loss {stats.get('validation_nll_before')} → "
        f"{stats.get('validation_nll_realised')} nats/token (offset scale {scale})"
    )
    rows = start + offsets[:, None] * direction[None, :]
    return Calibration(offsets.cpu(), direction.cpu(), rows.cpu(), stats, history)


def save(directory: Path, calibration: Calibration) -> None:
    """The offsets and their direction (safetensors), so a user with an untied head can apply them exactly."""
    from safetensors.torch import save_file

    save_file(
        {
            "offsets": calibration.offsets.contiguous(),
            "direction": calibration.direction.contiguous(),
        },
        str(directory / OFFSETS_FILE),
    )
