"""The training job end to end on a small simulated shop, the promotion gate, and the no-leak rule."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retain import backtest, promotion, selection
from retain.evaluation import ece_noise_bound, evaluate, expected_calibration_error
from retain.registry import CHALLENGER, CHAMPION, Registry
from retain.simulate.oracle import oracle_for
from retain.snapshot import read_current
from training.job import train


@pytest.fixture
def job_config(config, tmp_path):
    """A throwaway MLflow store; the ECE limit is loosened because 3,000 members make ECE noisy (the
    limit itself is tested on its own above)."""
    mlflow = dataclasses.replace(
        config.mlflow, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts")
    )
    serving = dataclasses.replace(config.serving, snapshot_dir=str(tmp_path / "snapshots"))
    training = dataclasses.replace(config.training, max_ece=0.1)
    winback = dataclasses.replace(config.winback, min_treated=200, min_control=50)  # the small shop's campaigns
    return dataclasses.replace(config, mlflow=mlflow, serving=serving, training=training, winback=winback)


def test_the_gate_promotes_only_a_model_that_is_as_good_and_calibrated():
    good, champion = {"pr_auc": 0.80, "ece": 0.01}, {"pr_auc": 0.81}
    assert promotion.decide(good, None, None, 0.03).decision == promotion.PROMOTED
    within = {"estimate": -0.01, "ci_low": -0.03, "ci_high": 0.01}  # lower, but inside the paired interval
    assert promotion.decide(good, champion, within, 0.03).promote
    beyond = {"estimate": -0.01, "ci_low": -0.015, "ci_high": -0.004}
    worse = promotion.decide(good, champion, beyond, 0.03)
    assert worse.decision == promotion.NOT_PROMOTED and "beyond the paired interval" in worse.reason
    uncalibrated = promotion.decide({"pr_auc": 0.9, "ece": 0.05}, champion, within, 0.03)
    assert uncalibrated.decision == promotion.NOT_PROMOTED and "ECE" in uncalibrated.reason
    first = promotion.decide({"pr_auc": 0.9, "ece": 0.05}, None, None, 0.03)  # a shop must have a champion
    assert first.decision == promotion.PROMOTED and "above the limit" in first.reason


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
def test_the_bootstrap_metric_of_a_resample_is_scikit_learns_on_the_resampled_rows(metric):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from retain.evaluation import WeightedRanking, paired_bootstrap_gain

    reference = roc_auc_score if metric == "roc_auc" else average_precision_score
    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.3).astype(float)
    p = np.round(rng.random(2000) + 0.4 * y, 2)  # many ties
    rows = rng.integers(0, len(y), len(y))
    counts = np.bincount(rows, minlength=len(y)).astype(float)
    assert WeightedRanking(y, p, metric)(counts) == pytest.approx(reference(y[rows], p[rows]), abs=1e-12)
    better = paired_bootstrap_gain(y, p, rng.random(2000), metric)
    assert 0 < better["ci_low"] < better["estimate"] < better["ci_high"]
    assert np.isnan(paired_bootstrap_gain(np.ones(5), p[:5], p[:5], metric)["estimate"])
    # a resample with one label is skipped, not a crash: one positive among four members
    few = paired_bootstrap_gain(np.array([1.0, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3]), np.full(4, 0.5), metric)
    assert few["estimate"] > 0 and few["ci_low"] <= few["ci_high"]


def test_the_ece_limit_allows_for_the_sampling_noise_of_a_small_holdout():
    rng = np.random.default_rng(0)
    small, large = rng.uniform(0.05, 0.6, 300), rng.uniform(0.05, 0.6, 30_000)
    assert ece_noise_bound(small) > 0.03 > ece_noise_bound(large)  # 300 members: 0.03 is within the noise
    calibrated = [expected_calibration_error(rng.random(300) < small, small) for _ in range(200)]
    assert np.mean(np.array(calibrated) <= ece_noise_bound(small)) >= 0.9
    assert promotion.decide({"pr_auc": 0.1, "ece": 0.5}, {"pr_auc": 0.9}, 0.002, 0.03, force=True).decision == "forced"


@pytest.mark.slow
def test_the_job_registers_promotes_and_keeps_a_worse_model_back(small_shop, job_config, monkeypatch):
    results = train(small_shop, job_config)
    assert [r["task"] for r in results] == ["churn", "repurchase"]
    registry = Registry(job_config.mlflow)
    for task in ("churn", "repurchase"):
        champion = registry.version_by_alias(task, CHAMPION)
        assert champion.version == "1"
        assert champion.tags["retain.decision"] == "promoted"
        assert champion.tags["retain.dataset_fingerprint"] == small_shop.fingerprint
        assert {"retain.run_id", "retain.metric.pr_auc", "retain.metric.ece"} <= set(champion.tags)
        artifacts = {a.path for a in registry.client.list_artifacts(champion.run_id, "plots")}
        assert {
            "plots/calibration.png",
            "plots/roc_pr.png",
            "plots/gain.png",
            "plots/feature_importance.png",
        } <= artifacts
        calibration = json.loads(champion.tags["retain.calibration"])  # drawn by the daily report
        assert all(0 <= p <= 1 and 0 <= rate <= 1 and n > 0 for p, rate, n in calibration)
    uplift = registry.version_by_alias("uplift", CHAMPION)
    assert "retain.metric.offers" in uplift.tags
    assert "retain.metric.qini" in uplift.tags  # measured on held-out offers: so is its calibration by decile
    # the gate: the T-learner serves exactly when its held-out Qini's interval is above 0, and says so
    above = float(uplift.tags["retain.metric.qini_ci_low"]) > 0
    assert uplift.tags["retain.kind"] == ("t_learner" if above else "prior")
    assert ("is above 0" if above else "is not above 0") in uplift.tags["retain.decision_reason"]
    # the coupon's effects measured on the shop's campaigns are stated beside it
    assert "prior uplift" in uplift.tags["retain.decision_reason"]
    assert "members kept per extra buyer" in uplift.tags["retain.decision_reason"]
    run_id = uplift.tags["retain.run_id"]
    logged = {a.path for a in registry.client.list_artifacts(run_id)}
    logged |= {a.path for a in registry.client.list_artifacts(run_id, "plots")}
    assert {"uplift_calibration.json", "plots/uplift_calibration.png"} <= logged
    value_model, _ = registry.load("value")
    assert value_model.gamma_gamma.p > 0 and float(registry.version_by_alias("value").tags["retain.mean_value"]) > 0
    frame, meta = read_current(Path(job_config.serving.snapshot_dir))
    versions = {"retain-churn": "1", "retain-repurchase": "1", "retain-uplift": "1", "retain-value": "1"}
    assert meta["model_versions"] == versions
    assert meta["as_of"].startswith(str(small_shop.observed_until.date()))
    acting = frame["action"] != "none"  # reasons precomputed for the members a decision reaches, not the rest
    assert frame["churn_risk"].between(0, 1).all() and acting.any()
    assert frame["reason_1_feature"].notna().to_numpy().tolist() == acting.to_numpy().tolist()

    # A crippled model (a single two-leaf tree) is worse on the same held-out snapshot: not promoted.
    crippled = dataclasses.replace(job_config.lightgbm, max_trees=1, num_leaves=2)
    train(small_shop, dataclasses.replace(job_config, lightgbm=crippled))
    for task in ("churn", "repurchase"):
        assert registry.version_by_alias(task, CHAMPION).version == "1"
        challenger = registry.version_by_alias(task, CHALLENGER)
        assert challenger.version == "2" and challenger.tags["retain.decision"] == "not_promoted"
        # judged against the champion's pipeline refitted on the same data, not its stored artifact
        assert "its own LightGBM settings" in challenger.tags["retain.gate_compared_with"]

    # --force-promote is the deliberate override, and it says who did it.
    train(small_shop, job_config, force=True)
    forced = registry.version_by_alias("churn", CHAMPION)
    assert forced.version == "3" and forced.tags["retain.decision"] == "forced" and forced.tags["retain.forced_by"]


@pytest.mark.slow
@pytest.mark.parametrize(("task", "horizon"), [("churn", 90), ("repurchase", 30)])
def test_no_model_scores_above_the_oracle_and_the_served_one_comes_close(small_shop, config, task, horizon):
    """The oracle (the simulator's true probabilities, passed in as a baseline) bounds every model: one above
    it would have seen the future. And the bound is not idle: the served model reaches most of it."""
    snapshots = backtest.Snapshots(small_shop, config, oracle=oracle_for(small_shop))
    fitted = backtest.fit_for_cutoff(snapshots, pd.Timestamp("2024-11-01"), task, horizon)
    result, y, scores = backtest.evaluate_at(snapshots, fitted, task)
    oracle = result["models"]["oracle"]
    for name, metrics in result["models"].items():
        assert metrics["roc_auc"] <= oracle["roc_auc"], name
    assert oracle["roc_auc"] > 0.8
    assert result["selected_share_of_oracle_roc_auc"] > 0.9
    assert result["models"][result["selected"]]["roc_auc"] > result["models"]["recency"]["roc_auc"]


def test_a_young_shop_trains_on_a_shorter_horizon_that_leaves_three_snapshots(small_shop, config):
    # Data from 2024-01-01: a 273-day window at 2024-12-01 leaves no monthly snapshot with 60 days of history.
    plan = backtest.plan_snapshots(small_shop, pd.Timestamp("2024-12-01"), 273, config)
    assert plan.shortened and plan.train_horizon_days < 273
    dates = [*plan.calibration_dates, *plan.fit_dates]
    assert len(dates) == config.training.min_snapshots
    assert all(d + pd.Timedelta(days=plan.train_horizon_days) <= pd.Timestamp("2024-12-01") for d in dates)
    assert max(plan.fit_dates) < min(plan.calibration_dates)  # calibration is on a later slice


@pytest.mark.slow
def test_backtest_results_have_the_documented_shape(small_shop, config):
    doc = backtest.run_backtest(
        small_shop, [pd.Timestamp("2024-12-01")], {"repurchase": 30}, config, oracle=oracle_for(small_shop)
    )
    assert doc["dataset"]["fingerprint"] == small_shop.fingerprint
    (result,) = doc["results"]
    assert {"as_of", "task", "horizon_days", "train_horizon_days", "n_members", "positive_rate"} <= set(result)
    assert set(result["models"]) == {
        "bgnbd_logistic",
        "lightgbm",
        "lightgbm_anchored",
        "bgnbd",
        "bgnbd_expected",
        "recency",
        "rfm_logistic",
        "oracle",
    }
    assert result["selected"] in config.selection.candidates and result["selection"]["reason"]
    for metrics in result["models"].values():
        assert set(metrics) == {"roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_at_10pct"}


def test_expected_calibration_error_uses_ten_equal_width_bins():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.95, 0.95, 0.55])
    # bins: [0.0,0.1): |0-0.05|, [0.9,1.0]: |1-0.95| for two rows, [0.5,0.6): |1-0.55|
    assert expected_calibration_error(y, p) == pytest.approx((0.05 + 2 * 0.05 + 0.45) / 4)


def store_config(config, tmp_path):
    """The project's own settings (max_ece 0.03 included) with a throwaway MLflow store and snapshots."""
    mlflow = dataclasses.replace(
        config.mlflow, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=str(tmp_path / "artifacts")
    )
    serving = dataclasses.replace(config.serving, snapshot_dir=str(tmp_path / "snapshots"))
    return dataclasses.replace(config, mlflow=mlflow, serving=serving)


@pytest.mark.slow
def test_a_small_shop_gets_champions_that_export_and_serve(config, tmp_path):
    """The shop of issue 11: `retain simulate --members 3000 --days 500 --seed 31`, trained with the
    project's settings, once left no churn champion (its first model failed the ECE gate)."""
    from retain import export
    from retain.dataset import open_dataset
    from retain.serving_state import ServingState
    from retain.simulate import simulate_shop

    simulate_shop(tmp_path / "shop", members=3000, days=500, seed=31)
    shop = open_dataset(tmp_path / "shop")
    settings = store_config(config, tmp_path)
    train(shop, settings)
    registry = Registry(settings.mlflow)
    assert registry.missing_champions(("churn", "repurchase", "uplift", "value")) == []
    tags = registry.version_by_alias("churn", CHAMPION).tags
    family = tags["retain.model_family"]
    assert family in ("lightgbm", "lightgbm_anchored", "bgnbd") and float(tags["retain.ece_limit"]) >= 0.03
    assert json.loads(tags["retain.selection"])["selected"] in config.selection.candidates
    written = export.run(shop, settings, registry, shop.observed_until, tmp_path / "exports")
    assert written.status == "written" and written.summary["model_families"]["retain-churn"] == family
    state = ServingState.load(settings, registry, generation=0)
    assert state.describe()["models"]["retain-churn"]["family"] == family
    assert json.loads(state.score_response([state.pending.index[0]]))["unknown"] == []


def test_a_shop_too_small_to_train_is_refused_before_anything_is_registered(config, tmp_path):
    from retain.dataset import open_dataset
    from retain.errors import RetainError
    from retain.simulate import simulate_shop

    simulate_shop(tmp_path / "tiny", members=120, days=400, seed=3)
    settings = store_config(config, tmp_path)
    with pytest.raises(RetainError, match="training needs at least 200"):
        train(open_dataset(tmp_path / "tiny"), settings)
    assert Registry(settings.mlflow).missing_champions(("churn", "repurchase", "uplift", "value")) == [
        "retain-churn",
        "retain-repurchase",
        "retain-uplift",
        "retain-value",
    ]


def test_metrics_of_a_holdout_with_one_label_are_missing_not_an_error():
    metrics = evaluate(np.zeros(50, dtype=int), np.linspace(0.1, 0.9, 50))
    assert np.isnan(metrics["roc_auc"]) and np.isnan(metrics["pr_auc"]) and metrics["ece"] > 0


@pytest.mark.slow
def test_retain_serve_without_champions_is_one_sentence(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {
        **os.environ,
        "RETAIN_API_TOKEN": "t",
        "RETAIN_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "RETAIN_SERVING_SNAPSHOT_DIR": str(tmp_path / "snapshots"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "retain.cli", "serve", "--port", "9"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "There is no champion for retain-churn" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_selection_at_a_cutoff_reads_nothing_at_or_after_it(small_shop, config, tmp_path):
    """The same selection and the same served model from the shop cut at C as from the whole shop."""
    from retain.dataset import open_dataset, write_dataset

    cutoff = pd.Timestamp("2025-01-01")
    times = {"orders": "ordered_at", "events": "event_at", "offers": "sent_at", "subscriptions": "started_at"}
    tables = {}
    for table in ("orders", "members", "events", "offers", "subscriptions", "suppressions"):
        if small_shop.has(table):
            frame = small_shop.read(table)
            tables[table] = frame[frame[times[table]] < cutoff] if table in times else frame
    write_dataset(tmp_path / "cut", tables, cutoff, "CNY")
    cut = open_dataset(tmp_path / "cut")
    whole = backtest.fit_for_cutoff(backtest.Snapshots(small_shop, config), cutoff, "repurchase", 30)
    before = backtest.fit_for_cutoff(backtest.Snapshots(cut, config), cutoff, "repurchase", 30)
    assert whole.selection == before.selection and whole.selection["as_of"] == "2024-12-02"
    x = backtest.Snapshots(small_shop, config).features(cutoff, 30)
    np.testing.assert_array_equal(whole.model.predict(x), before.model.predict(x))


@pytest.mark.slow
def test_on_a_bgnbd_shop_the_served_model_is_anchored_or_as_good_as_bgnbd(tmp_path, config):
    from retain.dataset import open_dataset
    from retain.simulate import simulate_bgnbd

    simulate_bgnbd(
        tmp_path / "bgnbd", 6000, 104.0, 0.243, 4.414, 0.793, 2.426, seed=5, start=pd.Timestamp("2024-01-01")
    )
    shop = open_dataset(tmp_path / "bgnbd")
    doc = backtest.run_backtest(shop, [pd.Timestamp("2025-07-01")], {"repurchase": 90}, config)
    (result,) = doc["results"]
    gain = result["selected_roc_auc_gain_vs_bgnbd"]  # served minus BG/NBD, with its paired interval
    assert gain["ci_high"] >= 0, result["selection"]  # not beaten by the model that made the data


def test_the_job_says_what_it_cannot_date(tmp_path, config):
    from conftest import make_dataset, orders_frame

    from training.job import point_in_time_notes

    orders = orders_frame([("a", "2025-01-01", 10, "食品", "refunded", None), ("b", "2025-01-02", 10)])
    members = pd.DataFrame({"member_id": ["a", "b"], "tier": ["gold", "silver"]})  # today's tiers, undated
    notes = point_in_time_notes(make_dataset(tmp_path, {"orders": orders, "members": members}, "2025-02-01"), config)
    assert notes[0].startswith("tier: not used") and notes[1].startswith("refunds: 1 of 1 have no refunded_at")


@pytest.mark.slow
def test_the_candidates_come_from_the_config(small_shop, config):
    from retain import config as config_module
    from retain.config import ConfigError, SelectionConfig

    assert config_module.CANDIDATES == selection.CANDIDATES  # the config validates the names selection fits

    only_trees = dataclasses.replace(config, selection=SelectionConfig(candidates=["lightgbm"]))
    fitted = backtest.fit_for_cutoff(
        backtest.Snapshots(small_shop, only_trees), pd.Timestamp("2025-01-01"), "churn", 90
    )
    assert list(fitted.candidates) == ["lightgbm"] and fitted.selected == "lightgbm"
    with pytest.raises(ConfigError, match=r"selection\.candidates"):
        SelectionConfig(candidates=["xgboost"])


def test_candidates_sharing_binned_data_are_the_models_fitted_alone():
    """The candidates of a cutoff share LightGBM's binned data; each sets its own init score, and the
    unanchored one after an anchored one starts from none (the shared data's is cleared)."""
    from retain import btyd, models
    from retain.config import LightGBMConfig

    rng = np.random.default_rng(0)
    n = 6000
    frame = pd.DataFrame({"recency_days": rng.exponential(60, n), "frequency": rng.poisson(3, n) + 1.0})
    frame["bgnbd_p_purchase"] = 1 / (1 + frame["recency_days"] / 60)
    frame["bgnbd_expected_purchases"] = frame["frequency"] * frame["bgnbd_p_purchase"]
    y = pd.Series((rng.random(n) < frame["bgnbd_p_purchase"]).astype(int))
    train, cal, y_train, y_cal = frame[:4000], frame[4000:], y[:4000], y[4000:]
    settings = LightGBMConfig(max_trees=40, min_child_samples=50)
    bgnbd = btyd.BGNBD(r=0.25, alpha=4.0, a=0.8, b=2.5)
    shared = models.lightgbm_datasets(train, y_train, cal, y_cal, {**settings.params(), "seed": 7})
    for anchor in ("bgnbd_p_purchase", None):
        with_shared = models.fit_task_model(
            "repurchase", 30, train, y_train, cal, y_cal, 7, bgnbd, anchor, settings, shared
        )
        alone = models.fit_task_model("repurchase", 30, train, y_train, cal, y_cal, 7, bgnbd, anchor, settings)
        np.testing.assert_array_equal(with_shared.predict(cal), alone.predict(cal))


def test_the_pooled_model_averages_bgnbd_and_an_rfm_regression_and_explains_itself():
    """`bgnbd_logistic`: the mean of BG/NBD's log-odds (from the column that ranks the calibration slice
    better) and an RFM logistic regression's — the same regression `fit_rfm_logistic` fits — calibrated
    at its own horizon and served uncalibrated over a longer one (its anchor says that horizon's odds)."""
    import pickle

    from scipy import special

    from retain import btyd, models, plots

    rng = np.random.default_rng(1)
    n = 8000
    frame = pd.DataFrame(
        {
            "recency_days": rng.exponential(60, n),
            "frequency": rng.poisson(3, n) + 1.0,
            "monetary_mean": rng.gamma(2.0, 50.0, n),
        }
    )
    truth = 1 / (1 + frame["recency_days"] / 60)
    frame["bgnbd_expected_purchases"] = truth * 1.5  # ranks as the truth does
    frame["bgnbd_p_purchase"] = np.clip(truth + rng.normal(0, 0.2, n), 0.01, 0.99)  # a noisy ranking
    y = pd.Series((rng.random(n) < truth).astype(int))
    train, cal, y_train, y_cal = frame[:6000], frame[6000:], y[:6000], y[6000:]
    model = models.fit_pooled_model("repurchase", 30, train, y_train, cal, y_cal, btyd.BGNBD(0.25, 4.0, 0.8, 2.5))
    assert model.family == "bgnbd_logistic" and model.anchor == "bgnbd_expected_purchases"

    regression = models.fit_rfm_logistic(train, y_train).decision_function(cal[models.RFM_COLUMNS])
    anchor = models.btyd_anchor(cal["bgnbd_expected_purchases"].to_numpy(), "repurchase", model.anchor)
    np.testing.assert_allclose(model.raw_score(cal), 0.5 * anchor + 0.5 * regression, rtol=1e-6)
    calibrated = model.calibrator.predict_proba(model.raw_score(cal).reshape(-1, 1))[:, 1]
    np.testing.assert_allclose(model.predict(cal), calibrated, rtol=1e-9)

    longer = cal["bgnbd_expected_purchases"].to_numpy() * 3  # the anchor over a longer horizon
    raw_longer = model.raw_matrix(model.matrix(cal), longer)
    np.testing.assert_allclose(model.predict(cal, longer), special.expit(raw_longer), rtol=1e-12)
    assert model.predict(cal, longer).mean() > model.predict(cal).mean()  # a longer horizon, likelier

    # reasons: the terms add up to the log-odds, less one constant for every member
    explained = model.contributions(cal).sum(axis=1).to_numpy() - model.raw_score(cal)
    np.testing.assert_allclose(explained, explained[0], atol=1e-9)
    assert (model.contributions(cal)["bgnbd_p_purchase"] == 0).all()  # not a column the model reads

    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(cal), model.predict(cal))
    assert plots.feature_importance(model).axes[0].get_xlabel().startswith("share of the pooled")


def test_an_anchored_candidate_without_trees_is_the_simplest():
    """Within the interval of a better one, BG/NBD itself (an anchored candidate with no tree) is
    preferred even to the pooled model, which adds a regression to it (`selection.choose` keeps the
    first of the order it is given that is within the interval)."""
    from types import SimpleNamespace

    fitted = {
        "bgnbd_logistic": SimpleNamespace(family="bgnbd_logistic"),
        "lightgbm_anchored": SimpleNamespace(family="bgnbd"),
        "lightgbm": SimpleNamespace(family="lightgbm"),
    }
    assert selection.simplest_first(fitted) == ["lightgbm_anchored", "bgnbd_logistic", "lightgbm"]
    fitted["lightgbm_anchored"].family = "lightgbm_anchored"  # with trees: the configured order
    assert selection.simplest_first(fitted) == ["bgnbd_logistic", "lightgbm_anchored", "lightgbm"]


@pytest.mark.slow
def test_past_max_rows_the_fit_takes_a_member_sample_and_loses_little(small_shop, config):
    """Training past the driver: a member sample (the same members in every snapshot) that fits in
    `training.max_rows`, measured against the full fit on the same held-out cutoff."""
    cutoff, task = pd.Timestamp("2024-11-01"), "repurchase"
    full_snapshots = backtest.Snapshots(small_shop, config)
    plan = backtest.plan_snapshots(small_shop, cutoff, 30, config)
    x_full, _ = full_snapshots.stacked(plan.fit_dates, task, 30)
    limit = len(x_full) // 2
    sampled = dataclasses.replace(config, training=dataclasses.replace(config.training, max_rows=limit))
    snapshots = backtest.Snapshots(small_shop, sampled)
    x, _ = snapshots.stacked(plan.fit_dates, task, 30)
    assert 0.4 * len(x_full) < len(x) <= 0.6 * len(x_full)
    # a member sampled in one snapshot is sampled in all: each kept member keeps all its rows
    kept = set(x.index)
    assert x.index.value_counts().sum() == x_full.index[x_full.index.isin(kept)].size
    results = {}
    for name, snaps in (("full", full_snapshots), ("sample", snapshots)):
        fitted = backtest.fit_for_cutoff(snaps, cutoff, task, 30)
        result, _, _ = backtest.evaluate_at(snaps, fitted, task)
        results[name] = result["models"][result["selected"]]
    assert results["sample"]["roc_auc"] > results["full"]["roc_auc"] - 0.03
    assert (
        backtest.member_sample(pd.Index(["a", "b"]), 1.0).all()
        and not backtest.member_sample(pd.Index(["a"]), 0.0).any()
    )
