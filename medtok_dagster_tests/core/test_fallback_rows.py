"""Fallback rows predicted from distilled ones: recovers a real linear relation, refuses noise and tiny fits."""

import torch

from medtok_dagster.core import fallback_rows as F


def problem(signal: float, seed: int = 0, rows: int = 120, width: int = 16):
    """Start rows, piece embeddings, and learned rows whose change is ``signal`` × a linear map of the features."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(rows, width, generator=generator)
    embedding = torch.randn(50, width, generator=generator)
    pieces = [[i % 50, (3 * i + 1) % 50] for i in range(rows)]
    features = F.piece_features(start, embedding, pieces)
    weights = torch.randn(features.shape[1], width, generator=generator)
    noise = torch.randn(rows, width, generator=generator)
    change = signal * features @ weights + noise
    return start, start + change, features, change


def test_features_are_start_first_piece_last_piece_and_a_constant():
    start = torch.zeros(2, 3)
    embedding = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    features = F.piece_features(start, embedding, [[1, 2, 3], []])
    assert features.shape == (2, 10)
    assert features[0].tolist() == [0, 0, 0, 3, 4, 5, 9, 10, 11, 1]
    assert features[1].tolist() == [0] * 9 + [1], "a token without pieces has zero piece features"


def test_fallback_rows_get_the_predicted_change_and_distilled_rows_stay():
    start, learned, features, change = problem(signal=1.0)
    distilled, fallback = list(range(100)), list(range(100, 120))
    observed = learned.clone()
    observed[fallback] = start[fallback]
    rows, fit = F.predict_fallback(start, observed, features, distilled, fallback)
    assert fit is not None and fit.fitted_on == 100 and fit.predicted == 20
    assert fit.validation_r2 > 0.8 and fit.ridge in F.RIDGE_GRID
    assert torch.equal(rows[distilled], observed[distilled])
    predicted = rows[fallback] - start[fallback]
    residual = (predicted - change[fallback]).pow(2).sum() / change[fallback].pow(2).sum()
    assert residual < 0.2, "the held-back rows' true change is recovered"
    assert "held-out R²" in fit.describe()


def test_no_map_when_changes_do_not_depend_on_the_pieces():
    start, learned, features, _ = problem(signal=0.0)
    rows, fit = F.predict_fallback(start, learned, features, list(range(100)), [100, 101])
    assert fit is None and rows is learned


def test_no_map_from_too_few_distilled_rows():
    start, learned, features, _ = problem(signal=1.0)
    few = list(range(F.MIN_FITTED - 1))
    rows, fit = F.predict_fallback(start, learned, features, few, [100])
    assert fit is None and torch.equal(rows, learned)
