"""`retain.forest` scores exactly as `Booster.predict(raw_score=True)`: same leaves, same sums, bit for bit,
on the values that decide a split's side (missing, zero, tiny, infinite, equal to a threshold); and its
contributions are `pred_contrib`'s, to rounding."""

import lightgbm as lgb
import numpy as np
import pytest

from retain import forest

N_FEATURES = 5


def awkward_matrix(rng: np.random.Generator, n: int, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Normal values with NaN, 0.0, -0.0, values below LightGBM's zero (1e-36), ±inf and, when given,
    values exactly on the model's thresholds."""
    x = rng.normal(size=(n, N_FEATURES))
    specials = np.array([np.nan, 0.0, -0.0, 1e-36, -1e-36, np.inf, -np.inf])
    mask = rng.random(x.shape) < 0.25
    x[mask] = rng.choice(specials, size=mask.sum())
    if thresholds is not None and len(thresholds):
        on = rng.random(x.shape) < 0.1
        x[on] = rng.choice(thresholds, size=on.sum())
    return x


def train(params: dict, rounds: int = 40, seed: int = 0, categorical: bool = False) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, N_FEATURES))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=len(x)) > 0.3).astype(int)
    x[(y == 1) & (rng.random(len(x)) < 0.5), 3] = np.nan  # missingness that predicts: NaN-only splits
    x[rng.random(len(x)) < 0.3, 4] = 0.0
    if categorical:  # two of six categories buy: only a categorical split separates them
        x[:, 2] = rng.integers(0, 6, size=len(x))
        y = np.isin(x[:, 2], [1, 4]).astype(int)
    dataset = lgb.Dataset(x, y, categorical_feature=[2] if categorical else "auto")
    booster = lgb.train({"objective": "binary", "verbose": -1, "seed": seed, **params}, dataset, rounds)
    text = booster.model_to_string()
    thresholds = np.array(
        [float(v) for line in text.splitlines() if line.startswith("threshold=") for v in line[10:].split()]
    )
    return booster, awkward_matrix(rng, 3000, thresholds[np.isfinite(thresholds)])


@pytest.mark.parametrize(
    "params",
    [
        {"num_leaves": 15},
        {"num_leaves": 64, "min_data_in_leaf": 5},  # the most leaves a tree may have
        {"num_leaves": 7, "zero_as_missing": True},  # zero is a missing value
        {"num_leaves": 7, "use_missing": False},  # NaN reads as 0.0
        {"num_leaves": 15, "min_data_in_leaf": 5000},  # no split is allowed: single-leaf trees
    ],
    ids=["nan-missing", "64-leaves", "zero-as-missing", "no-missing", "single-leaf"],
)
def test_forest_scores_exactly_as_the_booster(params):
    booster, x = train(params)
    compiled = forest.Forest.of(booster)
    assert compiled is not None
    assert np.array_equal(compiled.raw_score(x), booster.predict(x, raw_score=True))


def test_the_rule_folding_covers_every_kind_of_split():
    """The test data reach NaN-only splits (threshold +inf) and zero-as-missing splits, not just plain ones."""
    kinds = set()
    for params in ({"num_leaves": 15}, {"num_leaves": 7, "zero_as_missing": True}):
        kinds |= set(forest.Forest.of(train(params)[0]).column_kind.tolist())
    assert {forest.PLAIN, forest.NAN_RIGHT, forest.IS_NAN, forest.ZERO_LEFT} <= kinds


def test_first_trees_only_when_asked_and_rows_split_across_threads():
    booster, x = train({"num_leaves": 15})
    first_seven = booster.predict(x, raw_score=True, num_iteration=7)
    assert np.array_equal(forest.raw_score(booster, x, num_iteration=7), first_seven)
    many = np.concatenate([x] * 3)  # 9,000 rows: more than one thread's share
    assert len(many) > 2 * forest.ROWS_PER_THREAD
    assert np.array_equal(forest.raw_score(booster, many, threads=2), booster.predict(many, raw_score=True))
    assert np.array_equal(forest.raw_score(booster, x[:1]), booster.predict(x[:1], raw_score=True))


@pytest.mark.parametrize(
    "params, categorical",
    [({"num_leaves": 100, "min_data_in_leaf": 5}, False), ({"num_leaves": 7}, True)],
    ids=["over-64-leaves", "categorical"],
)
def test_a_model_the_loop_does_not_score_keeps_the_booster(params, categorical):
    booster, x = train(params, rounds=10, categorical=categorical)
    assert forest.Forest.of(booster) is None
    assert np.array_equal(forest.raw_score(booster, x), booster.predict(x, raw_score=True))
    contributions = forest.contributions(booster, x)
    assert np.array_equal(contributions, booster.predict(x, pred_contrib=True))


@pytest.mark.parametrize(
    "params",
    [
        {"num_leaves": 15},
        {"num_leaves": 64, "min_data_in_leaf": 5},
        {"num_leaves": 7, "zero_as_missing": True},
        {"num_leaves": 7, "use_missing": False},
        {"num_leaves": 15, "min_data_in_leaf": 5000},
    ],
    ids=["nan-missing", "64-leaves", "zero-as-missing", "no-missing", "single-leaf"],
)
def test_contributions_are_lightgbms_treeshap(params, monkeypatch):
    """Each tree explained once per way its splits send the rows, then copied: LightGBM's values to
    rounding (its sums are grouped differently), for every row, also across blocks of rows."""
    booster, x = train(params)
    monkeypatch.setattr(forest, "CONTRIBUTION_ROWS", 1000)  # 3,000 rows: three blocks
    expected = booster.predict(x, pred_contrib=True)
    contributions = forest.contributions(booster, x)
    assert contributions.shape == expected.shape
    np.testing.assert_allclose(contributions, expected, rtol=0, atol=1e-12)
    assert np.allclose(contributions.sum(axis=1), booster.predict(x, raw_score=True), rtol=0, atol=1e-12)
    first_seven = forest.contributions(booster, x, num_iteration=7)
    np.testing.assert_allclose(first_seven, booster.predict(x, pred_contrib=True, num_iteration=7), atol=1e-12)
    few = x[: forest.GROUPED_MIN_ROWS - 1]  # a service request: one pred_contrib call, exactly LightGBM's
    assert np.array_equal(forest.contributions(booster, few), booster.predict(few, pred_contrib=True))


def test_a_matrix_of_the_wrong_width_is_refused():
    booster, x = train({"num_leaves": 7}, rounds=5)
    with pytest.raises(ValueError, match="reads 5 columns"):
        forest.raw_score(booster, x[:, :3])
