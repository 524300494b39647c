"""Rows for new tokens that distillation did not reach, predicted from the ones it did.

Distillation learns a row only for tokens that occur in the training corpora (and, on a CPU, only
for the most frequent of them); the rest start from ``subtoken_mean``. What distillation adds to a
``subtoken_mean`` row is mostly specific to the token, but part of it is systematic: it depends on
the token's pieces in a way a linear map can learn. So the change each distilled row underwent is
regressed (ridge) on features of its pieces, and the fitted map gives every other row its predicted
change. The ridge strength is chosen on distilled tokens held out of the fit; if too few rows were
distilled to fit and check a map, the fallback rows keep their start.

A prediction is a linear combination of the distilled changes, so it stays in the subspace those
changes live in: with the tied row's output-read directions frozen, predicted rows keep their
output calibration too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

RIDGE_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
MIN_FITTED = 32
"""Fewest distilled rows worth fitting a map on (a fifth of them are held out to choose the ridge)."""
VALIDATION_SHARE = 0.2
MIN_R2 = 0.01
"""A map must explain at least this share of held-out rows' change; chance fits of pure noise stay below it.

Real changes are mostly token-specific, so a useful map explains little of them (about 0.05 on the
embedded 270M) and still moves held-out bits per character (README)."""


@dataclass(frozen=True)
class FallbackFit:
    """How the map was chosen: the ridge strength, its held-out R², and how many rows it saw."""

    ridge: float
    validation_r2: float
    fitted_on: int
    predicted: int

    def describe(self) -> str:
        return (
            f"subtoken_mean + the change predicted from their pieces (ridge {self.ridge:g} fitted on "
            f"{self.fitted_on} distilled rows, held-out R² {self.validation_r2:.3f})"
        )


def piece_features(
    start: torch.Tensor, embedding: torch.Tensor, pieces: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Per new token: its starting row, its first and last piece's rows, and a constant.

    The first piece carries what the word begins with (often its stem), the last its ending (a
    particle or suffix), which decides most of how the following token is read. The features are
    built on ``embedding``'s device (the model's), so a model on a GPU never meets a host tensor.
    """
    device = embedding.device
    first = _piece_rows(embedding, [p[0] if p else -1 for p in pieces])
    last = _piece_rows(embedding, [p[-1] if p else -1 for p in pieces])
    constant = torch.ones(len(pieces), 1, device=device)
    return torch.cat([start.to(device).float(), first, last, constant], dim=1)


def _piece_rows(embedding: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """``embedding[id]`` as float32 per id, zeros where the id is -1 (a token without pieces)."""
    index = torch.tensor(ids, dtype=torch.long, device=embedding.device)
    rows = embedding[index.clamp(min=0)].float()
    return rows.masked_fill((index < 0)[:, None], 0.0)


def _ridge(features: torch.Tensor, targets: torch.Tensor, strength: float) -> torch.Tensor:
    gram = features.T.double() @ features.double()
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + strength * eye, features.T.double() @ targets.double()).float()


def _r2(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    return float(1 - (actual - predicted).pow(2).sum() / actual.pow(2).sum().clamp(min=1e-12))


def predict_fallback(
    start: torch.Tensor,
    learned: torch.Tensor,
    features: torch.Tensor,
    distilled: Sequence[int],
    fallback: Sequence[int],
    seed: int = 0,
) -> tuple[torch.Tensor, FallbackFit | None]:
    """``learned`` with its ``fallback`` rows replaced by ``start`` + the predicted change.

    Indices are row positions; the fit runs on ``features``' device, where ``start`` and
    ``learned`` must live too. Returns the rows and how the map was fitted, or ``learned``
    unchanged and ``None`` when fewer than :data:`MIN_FITTED` rows were distilled or no ridge
    strength explains at least :data:`MIN_R2` of the held-out rows' changes.
    """
    if len(distilled) < MIN_FITTED or not fallback:
        return learned, None
    change = (learned - start).float()
    order = list(distilled)
    random.Random(seed).shuffle(order)
    held = max(1, int(len(order) * VALIDATION_SHARE))
    device = features.device
    check = torch.tensor(order[:held], device=device)
    fit = torch.tensor(order[held:], device=device)
    scores = {
        strength: _r2(features[check] @ _ridge(features[fit], change[fit], strength), change[check])
        for strength in RIDGE_GRID
    }
    strength = max(scores, key=scores.__getitem__)
    if scores[strength] < MIN_R2:
        return learned, None
    everything = torch.tensor(list(distilled), device=device)
    weights = _ridge(features[everything], change[everything], strength)
    rows = learned.clone()
    targets = torch.tensor(list(fallback), device=device)
    rows[targets] = start[targets] + (features[targets] @ weights).to(rows.dtype)
    return rows, FallbackFit(strength, round(scores[strength], 4), len(distilled), len(fallback))
