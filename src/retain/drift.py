"""Drift: how far today's members have moved from those a model was trained on.

The population stability index of one input (or score) between a reference and today:

    PSI = sum over bins of (today's share - reference share) x ln(today's share / reference share)

with the bins cut at the reference's deciles (`reference_bins`: up to 10 bins, fewer where values tie,
plus one bin for missing values), and each share floored at `SHARE_FLOOR` so that an empty bin counts
as rare rather than infinitely far. Rule of thumb: below 0.1 stable, 0.1-0.25 a shift worth a look, above
0.25 a shift the model has not seen (`monitor.max_psi`).

The training job stores each champion's references as `reference_bins.json` in its MLflow run
(`references`): every model input and the model's own probability, on the members as of the day it was
trained (the population it went live on), and the inputs ordered by the model's importance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retain import promotions

SHARE_FLOOR = 1e-4
REFERENCE_FILE = "reference_bins.json"  # in the champion's MLflow run
SCORE = "score"  # the model's probability, beside its inputs in the references


def reference_bins(values: np.ndarray, bins: int = 10) -> dict:
    """Decile edges of `values` (interior ones, ties merged) and each bin's share, and the missing share."""
    values = np.asarray(values, dtype=float)
    present = values[~np.isnan(values)]
    cuts = np.linspace(0, 1, bins + 1)[1:-1]  # edges are values the reference holds (no interpolation)
    edges = np.unique(np.quantile(present, cuts, method="inverted_cdf")) if len(present) else np.array([])
    return {"edges": edges.tolist(), **_shares(values, edges)}


def _shares(values: np.ndarray, edges: np.ndarray) -> dict:
    """The share of `values` in each bin (right-closed, from -inf to +inf) and the share missing."""
    missing = np.isnan(values)
    counts = np.bincount(np.searchsorted(edges, values[~missing], side="left"), minlength=len(edges) + 1)
    n = max(len(values), 1)
    return {"shares": (counts / n).tolist(), "missing": float(missing.sum() / n)}


def psi(reference: dict, values: np.ndarray) -> float:
    """The population stability index of `values` against a reference of `reference_bins`."""
    now = _shares(np.asarray(values, dtype=float), np.asarray(reference["edges"], dtype=float))
    expected = np.maximum([*reference["shares"], reference["missing"]], SHARE_FLOOR)
    actual = np.maximum([*now["shares"], now["missing"]], SHARE_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def importance_order(model) -> list[str]:
    """A task model's inputs, most important first: LightGBM's total gain where it has trees, else the
    size of each term of its logistic regression on standardised inputs, else the inputs in order."""
    names = list(model.feature_names)
    booster = getattr(model, "booster", None)
    if booster is not None and model.metadata.get("trees", 1):
        gain = booster.feature_importance("gain", iteration=model.metadata.get("trees"))
        by_name = dict(zip(booster.feature_name(), gain, strict=True))
        return sorted(names, key=lambda name: -by_name.get(name, 0.0))
    linear = getattr(model, "linear", None)
    if linear and "coef" in linear:
        weight = dict(zip(linear["columns"], np.abs(np.ravel(linear["coef"])), strict=True))
        return sorted(names, key=lambda name: -weight.get(name, 0.0))
    return names


def references(model, inputs: pd.DataFrame, scores: np.ndarray, as_of: pd.Timestamp, bins: int = 10) -> dict:
    """What the training job stores for a champion: the bins of every input and of its score on the
    members as of `as_of` (`inputs`: the model's input, `scoring.model_input`), and the inputs by importance.

    The calendar inputs (promotion days ahead: the same for every member on a day) are not a population and
    have no bins; their values are kept, so that `retain monitor` scores today's members on the reference's
    calendar and the score's PSI measures the members, not the season."""
    population = [name for name in model.feature_names if not promotions.is_calendar(name)]
    matrix = inputs.reindex(columns=population).to_numpy(dtype=float, na_value=np.nan)
    return {
        "as_of": pd.Timestamp(as_of).date().isoformat(),
        "members": len(inputs),
        "features": {name: reference_bins(matrix[:, i], bins) for i, name in enumerate(population)},
        "calendar": {name: float(inputs[name].iloc[0]) for name in model.feature_names if promotions.is_calendar(name)}
        if len(inputs)
        else {},
        SCORE: reference_bins(scores, bins),
        "importance": [name for name in importance_order(model) if not promotions.is_calendar(name)],
    }
