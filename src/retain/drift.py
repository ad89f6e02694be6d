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

A member's inputs move slowly when the data feeding them changes (a 30-day count takes 30 days to halve),
so the rows a day of each feed are compared too (`volume`): the median day of the last VOLUME_DAYS
against the median day of the VOLUME_REFERENCE_DAYS before training, promotion days left out of both (a
shop's 618 or 11.11 is not a broken feed). A tracking change that halves the events shows within days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retain import connection, promotions
from retain import contract as c
from retain.dataset import Dataset

SHARE_FLOOR = 1e-4
REFERENCE_FILE = "reference_bins.json"  # in the champion's MLflow run
SCORE = "score"  # the model's probability, beside its inputs in the references
VOLUME_TABLES = ("events", "orders")  # the feeds whose rows a day are checked
VOLUME_DAYS = 7  # the recent days compared: a week, so weekday patterns cancel
VOLUME_REFERENCE_DAYS = 28


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


def daily_rows(dataset: Dataset, table: str, first: pd.Timestamp, until: pd.Timestamp) -> pd.Series:
    """Rows of `table` a calendar day, from `first` to the day before `until` (`first` < `until`), every
    day listed (0 when none)."""
    days = pd.date_range(first.normalize(), until.normalize() - pd.Timedelta(days=1), freq="D")
    column = c.TIME_COLUMN[table]
    con = connection.connect()
    try:
        counted = con.execute(
            f"SELECT CAST({column} AS DATE) AS day, count(*) AS n FROM {dataset.scan(table)} "
            f"WHERE {column} >= ? AND {column} < ? GROUP BY 1",
            [days[0].to_pydatetime(), (days[-1] + pd.Timedelta(days=1)).to_pydatetime()],
        ).df()
    finally:
        con.close()
    return pd.Series(counted["n"].to_numpy(float), index=pd.to_datetime(counted["day"])).reindex(days, fill_value=0.0)


def volume(daily: pd.Series, trained: pd.Timestamp, windows: promotions.Windows) -> dict | None:
    """The median rows a day of the last VOLUME_DAYS ordinary days of `daily` (those outside promotion
    `windows`, within the last VOLUME_REFERENCE_DAYS) against the VOLUME_REFERENCE_DAYS before `trained`;
    None when either holds fewer than half its days."""
    ordinary = daily[~promotions.in_windows(daily.index, windows)]
    before = ordinary[
        (ordinary.index < trained) & (ordinary.index >= trained - pd.Timedelta(days=VOLUME_REFERENCE_DAYS))
    ]
    latest = ordinary[ordinary.index > daily.index[-1] - pd.Timedelta(days=VOLUME_REFERENCE_DAYS)].tail(VOLUME_DAYS)
    if len(before) < VOLUME_REFERENCE_DAYS // 2 or len(latest) < (VOLUME_DAYS + 1) // 2 or before.median() == 0:
        return None
    return {
        "reference_per_day": float(before.median()),
        "recent_per_day": float(latest.median()),
        "ratio": float(latest.median() / before.median()),
        "recent_first": latest.index[0].date().isoformat(),
        "recent_last": latest.index[-1].date().isoformat(),
    }
