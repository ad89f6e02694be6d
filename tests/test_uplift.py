"""The coupon uplift model: the Qini coefficient, the T-learner on offers with a control group, the
prior without history, and the offers' outcomes and point-in-time features."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset, orders_frame

from retain import uplift
from retain.config import ConfigError
from retain.evaluation import qini_coefficient, qini_interval, uplift_calibration


def campaign(n: int, seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray]:
    """A campaign's offers: each member's true effect, who was treated (80%), who bought."""
    rng = np.random.default_rng(seed)
    effect = rng.uniform(-0.1, 0.4, n)
    treated = rng.random(n) < 0.8
    return rng, effect, treated, (rng.random(n) < 0.2 + effect * treated).astype(int)


def test_qini_is_zero_for_random_targeting_positive_for_the_true_ranking_and_negative_reversed():
    rng, effect, treated, y = campaign(40_000, seed=0)
    assert qini_coefficient(y, treated, effect) > 0.15
    assert abs(qini_coefficient(y, treated, rng.random(len(y)))) < 0.05
    assert qini_coefficient(y, treated, -effect) < -0.15


def test_the_qini_interval_is_above_zero_for_the_true_ranking_and_covers_zero_for_a_random_one():
    rng, effect, treated, y = campaign(5000, seed=1)
    assert qini_interval(y, treated, effect, rounds=100)["ci_low"] > 0
    random = qini_interval(y, treated, rng.random(len(y)), rounds=100)
    assert random["ci_low"] < 0 < random["ci_high"]


def test_the_uplift_calibration_compares_each_decile_with_its_treated_minus_control_rate():
    # hand-built: 20 offers, the lower half predicted 0.0 (no effect), the upper half 0.5
    predicted = np.array([0.0] * 10 + [0.5] * 10)
    treated = np.array([True, False] * 10)
    bought = np.array([1, 1, 0, 0, 0, 0, 1, 1, 0, 0] + [1, 0, 1, 0, 1, 1, 1, 0, 0, 0])
    low, high = uplift_calibration(bought, treated, predicted, bins=2)
    assert low == {"predicted": 0.0, "realised": 0.0, "treated": 5, "control": 5}  # 2/5 - 2/5
    assert high == {"predicted": 0.5, "realised": pytest.approx(0.8 - 0.2), "treated": 5, "control": 5}
    (only,) = uplift_calibration(bought[treated], treated[treated], predicted[treated], bins=1)
    assert np.isnan(only["realised"])  # no control group, no estimate


def synthetic_offers(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Offers whose coupon works only for members with x > 0.5, more with a larger coupon."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"x": rng.random(n), "noise": rng.random(n)})
    treated = rng.random(n) < 0.7
    value = rng.choice([10.0, 50.0], n)
    effect = np.where(x["x"] > 0.5, 0.1 + 0.004 * value, 0.0)
    bought = rng.random(n) < 0.15 + effect * treated
    redeemed = bought & treated & (rng.random(n) < 0.7)  # 70% of treated buyers use the coupon
    offers = pd.DataFrame({"treated": treated, "value": value, "bought": bought, "redeemed": redeemed})
    return x, offers, effect


def test_the_t_learner_finds_who_the_coupon_moves_and_that_a_larger_coupon_moves_them_more(config):
    x, offers, _ = synthetic_offers(30_000, seed=1)
    model = uplift.fit_uplift(x, offers, config, seed=7)
    assert model.kind == "t_learner" and model.uses_value and model.redeem_share == pytest.approx(0.7, abs=0.05)
    x_new, offers_new, effect = synthetic_offers(20_000, seed=2)
    predicted = uplift.predict_offers(model, x_new, offers_new)
    moved = x_new["x"].to_numpy() > 0.5
    assert predicted[moved].mean() > predicted[~moved].mean() + 0.1
    y, t = offers_new["bought"], offers_new["treated"]
    assert qini_coefficient(y, t, predicted) > 0.8 * qini_coefficient(y, t, effect)  # near the true ranking
    matrix = x_new[moved].to_numpy()
    assert model.predict_matrix(matrix, 50.0).mean() > model.predict_matrix(matrix, 10.0).mean() + 0.05


def test_outside_past_campaigns_reach_the_uplift_is_the_prior_and_the_list_says_so(config):
    """Past campaigns reached members lapsed 60 to 300 days; one who bought 5 days ago is outside their
    range, so the trees' extrapolation is not used for them."""
    x, offers, _ = synthetic_offers(30_000, seed=5)
    x["recency_days"] = np.random.default_rng(5).uniform(60, 300, len(x))
    on = dataclasses.replace(config, winback=dataclasses.replace(config.winback, overlap_features=["recency_days"]))
    model = uplift.fit_uplift(x, offers, on, seed=7)
    low, high = model.support["recency_days"]
    assert 60 <= low < 65 and 295 < high <= 300  # the 1st and 99th percentiles
    members = pd.DataFrame({"x": [0.9, 0.9, 0.9], "noise": [0.5] * 3, "recency_days": [5.0, 120.0, np.nan]})
    matrix = members[model.feature_names].to_numpy()
    assert list(model.sources(matrix)) == ["prior", "model", "model"]  # a missing value is not outside
    uplifts = model.predict_matrix(matrix, 50.0)
    assert uplifts[0] == config.winback.prior_uplift and uplifts[1] > 0.15  # x > 0.5: the coupon moves them
    assert list(uplift.prior_model(config, model.feature_names, "none").sources(matrix)) == ["prior"] * 3
    # the prior moves only members still there to be moved (the scorer passes 1 - churn risk)
    scaled = model.predict_tiers(matrix, [50.0], reachable=np.array([0.2, 0.2, 0.2]))[0]
    assert scaled[0] == pytest.approx(0.2 * config.winback.prior_uplift) and scaled[1] == uplifts[1]
    with pytest.raises(ConfigError, match="overlap_quantile"):
        dataclasses.replace(config.winback, overlap_quantile=0.5)


def test_without_enough_history_the_model_is_the_configured_prior(config):
    x, offers, _ = synthetic_offers(500, seed=3)
    model = uplift.fit_uplift(x, offers, config, seed=7)
    assert model.kind == "prior" and "treated" in model.metadata["prior_reason"]
    assert (model.predict_matrix(x.to_numpy(), 10.0) == config.winback.prior_uplift).all()
    strict = dataclasses.replace(config, winback=dataclasses.replace(config.winback, min_control=10**6))
    assert uplift.fit_uplift(*synthetic_offers(30_000, seed=4)[:2], strict, seed=7).kind == "prior"


def test_the_measured_prior_compares_each_campaign_with_its_own_control_group():
    # hand-built: campaign 1 (reach 0.5 each): treated 2/4 bought, control 0/2; campaign 2 (reach 0.25):
    # treated 1/2, control 1/2, no effect; campaign 3 has no control group and is left out.
    offers = pd.DataFrame(
        {
            "sent_day": ["d1"] * 6 + ["d2"] * 4 + ["d3"] * 2,
            "treated": [True] * 4 + [False] * 2 + [True, True, False, False] + [True, True],
            "bought": [1, 1, 0, 0, 0, 0] + [1, 0, 1, 0] + [1, 1],
            "reach": [0.5] * 6 + [0.25] * 4 + [1.0] * 2,
        }
    )
    prior = uplift.campaign_prior(offers)
    # 4 x (0.5 - 0) + 2 x (0.5 - 0.5) extra buyers over 4 x 0.5 + 2 x 0.25 reachable treated members
    assert prior["estimate"] == pytest.approx(2.0 / 2.5)
    assert prior["ci_low"] < prior["estimate"] < prior["ci_high"]
    # A campaign mix that changes does not bias it: the late campaign reaches members who buy more anyway and
    # holds more of them out, so pooled treated and control rates compare different populations.
    rng = np.random.default_rng(3)
    days = np.repeat(["early", "late"], 20_000)
    base = np.where(days == "early", 0.05, 0.4)
    treated = rng.random(len(days)) < np.where(days == "early", 0.9, 0.5)
    reach = np.full(len(days), 0.5)
    bought = rng.random(len(days)) < base + 0.1 * reach * treated  # a coupon moves 10% of those still there
    frame = pd.DataFrame({"sent_day": days, "treated": treated, "bought": bought, "reach": reach})
    measured = uplift.campaign_prior(frame)
    assert measured["ci_low"] < 0.1 < measured["ci_high"]
    assert measured["ci_low"] > 0.05
    pooled = (bought[treated].mean() - bought[~treated].mean()) / 0.5
    assert pooled < 0  # what a pooled comparison would have said
    assert uplift.campaign_prior(offers[offers["sent_day"] == "d3"]) is None  # no control group, no estimate


def test_members_kept_per_extra_buyer_are_measured_campaign_by_campaign():
    # d1: 4 treated (2 bought, 3 retained) against 2 held out (none): 2 extra buyers, 3 extra kept.
    # d2: 2 treated (1 bought, 0 retained) against 2 (1 bought, 1 retained): 0 extra buyers, 1 fewer kept.
    # d3: retention not yet known (left out); d4: no control group (left out).
    offers = pd.DataFrame(
        {
            "sent_day": ["d1"] * 6 + ["d2"] * 4 + ["d3"] * 2 + ["d4"] * 2,
            "treated": [True] * 4 + [False] * 2 + [True, True, False, False] + [True, False] + [True, True],
            "bought": [1, 1, 0, 0, 0, 0] + [1, 0, 1, 0] + [1, 0] + [1, 1],
            "retained": [1, 1, 1, 0, 0, 0] + [0, 0, 1, 0] + [None, None] + [1, 1],
        }
    )
    kept = uplift.kept_per_buyer(offers, rounds=200)
    assert kept["estimate"] == pytest.approx((3 - 1) / (2 + 0))
    assert kept["ci_low"] <= kept["estimate"] <= kept["ci_high"]
    # no extra buyers at all: the ratio means nothing
    assert uplift.kept_per_buyer(offers[offers["sent_day"] == "d2"]) is None
    assert uplift.kept_per_buyer(offers.drop(columns="retained")) is None


def test_the_served_model_uses_the_measured_members_kept_else_the_churn_risk(config):
    model = uplift.prior_model(config, ["x"], "measured")
    churn = np.array([0.2, 0.9])
    assert model.kept(churn) is churn
    model.kept_per_buyer = 0.4
    assert model.kept(churn) == 0.4


def test_the_prior_model_serves_the_measured_prior_scaled_by_reach(config):
    model = uplift.prior_model(config, ["x"], "measured", prior_uplift=0.12)
    (uplifts,) = model.predict_tiers(np.zeros((2, 1)), [10.0], reachable=np.array([1.0, 0.25]))
    assert uplifts.tolist() == pytest.approx([0.12, 0.03])
    assert uplift.prior_model(config, ["x"], "configured").prior_uplift == config.winback.prior_uplift


def test_each_stage_gets_the_rise_measured_on_its_own_campaign_members(config):
    """Two campaigns (days), each with at-risk and sleeping members in both arms: the rise per unit of reach
    is measured apart per stage; a stage without a measured rise gets the pooled prior."""
    rows = []
    for day in ("d1", "d2"):
        for stage, n_t, bought_t, n_c, bought_c, reach in (
            ("at_risk", 10, 6, 10, 2, 0.5),  # 0.6 - 0.2 = 0.4 over a reach of 0.5: 0.8
            ("sleeping", 10, 3, 10, 2, 0.25),  # 0.3 - 0.2 = 0.1 over 0.25: 0.4
        ):
            for treated, n, bought in ((True, n_t, bought_t), (False, n_c, bought_c)):
                rows += [(day, stage, treated, int(i < bought), reach) for i in range(n)]
    offers = pd.DataFrame(rows, columns=["sent_day", "stage", "treated", "bought", "reach"])
    measured = uplift.stage_priors(offers)
    assert measured["at_risk"]["estimate"] == pytest.approx(0.8)
    assert measured["sleeping"]["estimate"] == pytest.approx(0.4)
    assert measured["at_risk"]["ci_low"] < 0.8 < measured["at_risk"]["ci_high"]

    model = uplift.prior_model(config, ["x"], "measured", prior_uplift=0.1)
    model.stage_priors = {"at_risk": 0.8}
    stage = np.array(["at_risk", "sleeping", "lost"])
    (uplifts,) = model.predict_tiers(np.zeros((3, 1)), [10.0], np.array([0.5, 0.5, 0.1]), stage)
    assert uplifts.tolist() == pytest.approx([0.4, 0.05, 0.01])


def test_an_offer_counts_as_bought_only_for_a_paid_order_inside_its_window(tmp_path):
    orders = orders_frame(
        [
            ("a", "2025-03-01", 100.0),  # history: everyone has a paid order before the offers
            ("b", "2025-03-01", 100.0),
            ("c", "2025-03-01", 100.0),
            ("d", "2025-03-01", 100.0),
            ("a", "2025-04-10", 80.0),  # inside a's 14 days
            ("b", "2025-04-20", 80.0),  # after b's window
            ("c", "2025-04-05", 80.0, "食品", "refunded", "2025-04-08"),  # refunded: not a purchase
        ]
    )
    sent = pd.Series(pd.to_datetime(["2025-04-01 10:00"] * 3 + ["2025-06-01 10:00"]), dtype="datetime64[us]")
    offers = pd.DataFrame(
        {
            "offer_id": ["o1", "o2", "o3", "o4"],
            "member_id": ["a", "b", "c", "d"],
            "sent_at": sent,
            "offer_type": "winback_coupon",
            "treated": [True, False, True, True],
            "value": 10.0,
            "redeemed_at": pd.Series(pd.to_datetime(["2025-04-10", None, None, None]), dtype="datetime64[us]"),
        }
    )
    ds = make_dataset(tmp_path, {"orders": orders, "offers": offers}, "2025-06-10")
    out = uplift.offer_outcomes(ds, pd.Timestamp("2025-01-01"), ds.observed_until, 14)
    # d's window (from 2025-06-01) is not complete by 2025-06-10: left out
    assert out["member_id"].tolist() == ["a", "b", "c"]
    assert out["bought"].tolist() == [True, False, False] and out["redeemed"].tolist() == [True, False, False]

    # Retention: a paid order in the 30 days after the window (b's 04-20 order), missing where that period
    # has not ended by the data's end (80 days after the window: 2025-06-24).
    kept = uplift.offer_outcomes(ds, pd.Timestamp("2025-01-01"), ds.observed_until, 14, retention_days=30)
    assert kept["retained"].tolist() == [False, True, False]
    assert kept["bought"].tolist() == [True, False, False]  # the longer join leaves the window's outcome as it was
    assert uplift.offer_outcomes(ds, pd.Timestamp("2025-01-01"), ds.observed_until, 14, 80)["retained"].isna().all()

    seen = []

    def features_at(day):
        seen.append(day)
        return pd.DataFrame({"f": [1.0, 2.0]}, index=pd.Index(["a", "b"], name="member_id"))

    x, kept = uplift.training_frame(out, features_at)
    assert seen == [pd.Timestamp("2025-04-01")]  # features as of the offer's day: strictly before sending
    assert kept["member_id"].tolist() == ["a", "b"] and x["f"].tolist() == [1.0, 2.0]


def test_a_fitted_uplift_model_replaces_the_prior_only_when_its_qini_interval_is_above_zero():
    from retain.promotion import uplift_earns_its_place

    assert uplift_earns_its_place({"estimate": 0.11, "ci_low": 0.02, "ci_high": 0.2})[0]
    spans, why = uplift_earns_its_place({"estimate": 0.10, "ci_low": -0.01, "ci_high": 0.22})  # the demo's, roughly
    assert not spans and "not above 0" in why
    assert not uplift_earns_its_place({"estimate": 0.1, "ci_low": float("nan"), "ci_high": float("nan")})[0]
    assert not uplift_earns_its_place(None)[0]


def test_the_arms_grow_the_trees_the_config_says(config):
    x, offers, _ = synthetic_offers(6000, seed=5)
    small = dataclasses.replace(
        config, winback=dataclasses.replace(config.winback, uplift_rounds=20, uplift_num_leaves=3, min_treated=100)
    )
    model = uplift.fit_uplift(x, offers, small, seed=7)
    for arm in (model.treated, model.control):
        assert arm.num_trees() == 20
        leaves = arm.dump_model()["tree_info"]
        assert max(tree["num_leaves"] for tree in leaves) <= 3
