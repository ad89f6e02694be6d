"""The decision policy: coupon tiers by expected value, subscription offers, segments, the budgeted list
with its control group, and the contact rules (cool-down, frequency cap, suppressions)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset, orders_frame

from retain import btyd, contact, decisions
from retain.uplift import UpliftModel
from retain.value import ValueModel

TIERS = {"满100减10": 10.0, "满200减30": 30.0, "满300减50": 50.0}
UPLIFTS = (0.02, 0.035, 0.045)


class FixedValue:
    """A value model that returns the given member values, also as the worth of an order a coupon adds
    (so that here a coupon's expected value is uplift x value - cost)."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)

    def value(self, summary):
        return self.values

    def value_and_worth(self, summary, lapsing=None):
        return self.values, self.values


class GrowingUplift(UpliftModel):
    """Uplift that rises with the coupon's value, with diminishing returns (0.02, 0.035, 0.045)."""

    def predict_tiers(self, matrix, coupon_values, reachable=None, stage=None):  # a learnt uplift: not scaled
        by_value = dict(zip(TIERS.values(), UPLIFTS, strict=True))
        return [np.full(len(matrix), by_value[value]) for value in coupon_values]


def policy(config, **winback):
    return dataclasses.replace(config, winback=dataclasses.replace(config.winback, coupon_tiers=TIERS, **winback))


def members(**overrides) -> pd.DataFrame:
    """Two regular buyers (a monthly 母婴 cycle); columns as features.build names them."""
    base = {
        "frequency": [12, 12],
        "first_purchase_days_ago": [360, 360],
        "last_purchase_days_ago": [20, 20],
        "monetary_mean": [300.0, 300.0],
        "monetary_total": [3600.0, 3600.0],  # 12 purchase days of 300
        "tenure_days": [360.0, 360.0],
        "cycle_cv_baby": [0.1, 0.1],
        "cycle_days_baby": [30.2, 30.2],
        "cat_share_baby": [0.5, 0.5],
        "cycle_cv_beauty": [np.nan, 0.5],
        "cycle_days_beauty": [np.nan, 20.0],
        "cycle_cv_food": [np.nan, np.nan],
        "cycle_days_food": [np.nan, np.nan],
        "active_subscriptions": [0, 0],
    }
    base.update(overrides)
    return pd.DataFrame(base, index=pd.Index(["a", "b"], name="member_id"))


def decide(features, churn, repurchase, value, uplift, config) -> pd.DataFrame:
    column = decisions.Columns(features)
    summary = btyd.summary_arrays(*(column(name) for name in btyd.SUMMARY_INPUTS))
    out = decisions.decide_arrays(
        column, summary, np.asarray(churn, float), np.asarray(repurchase, float), FixedValue(value), uplift, config
    )
    return pd.DataFrame(out, index=features.index)


def test_the_coupon_tier_with_the_highest_expected_value_is_offered(config):
    cfg = policy(config, send_cost=0.5)
    model = GrowingUplift([], prior_redeem=0.5)
    out = decide(members(), [0.8, 0.8], [0.0, 0.0], [2000.0, 300.0], model, cfg)
    # EV per tier = uplift x value - (0.5 + 0.5 x uplift x coupon value), nobody buying anyway (p_buy 0)
    ev = {label: u * 2000 - (0.5 + 0.5 * u * v) for (label, v), u in zip(TIERS.items(), UPLIFTS, strict=True)}
    best = max(ev, key=ev.get)
    assert out.loc["a", "action"] == "winback_coupon" and out.loc["a", "offer_detail"] == best == "满300减50"
    assert out.loc["a", "expected_value"] == pytest.approx(ev[best])
    assert out.loc["a", "uplift_source"] == "prior"  # a model without history: the list says so
    # For a member worth less, the small coupon is worth more than the large one.
    ev_b = {label: u * 300 - (0.5 + 0.5 * u * v) for (label, v), u in zip(TIERS.items(), UPLIFTS, strict=True)}
    assert out.loc["b", "offer_detail"] == max(ev_b, key=ev_b.get)


def test_members_who_would_buy_anyway_cost_their_redemption(config):
    cfg = policy(config)
    model = UpliftModel([], prior_uplift=0.05, prior_redeem=0.9)
    irregular = members(cycle_cv_baby=[np.nan, np.nan])
    out = decide(irregular, [0.8, 0.8], [0.0, 0.95], [4000.0, 4000.0], model, cfg)
    p_buy = decisions.p_buy_in_window(np.array([0.0, 0.95]), cfg)
    uplift = 0.05 * (1 - 0.8)  # the prior, for the 20% chance the member is still there to be moved
    cost = cfg.winback.send_cost + np.clip(p_buy + uplift, 0, 1) * 0.9 * 10.0
    assert out["cost"].to_numpy() == pytest.approx(cost) and cost[1] > cost[0]
    assert out.loc["a", "expected_value"] > out.loc["b", "expected_value"]


def test_no_coupon_when_its_expected_value_is_negative(config):
    model = UpliftModel([], prior_uplift=0.05, prior_redeem=0.9)
    out = decide(members(), [0.95, 0.95], [0.0, 0.0], [1.0, 1.0], model, policy(config))
    assert (out["action"] == "none").all() and (out["expected_value"] == 0).all()


def test_a_sleeping_dog_gets_no_coupon_whatever_its_value(config):
    model = UpliftModel([], prior_uplift=-0.02, prior_redeem=0.9)
    out = decide(members(), [0.9, 0.9], [0.0, 0.0], [1e6, 1e6], model, policy(config))
    assert (out["action"] != "winback_coupon").all()


def test_coupons_only_above_the_configured_churn_risk(config):
    model = UpliftModel([], prior_uplift=0.05, prior_redeem=0.9)
    out = decide(members(), [0.2, 0.7], [0.0, 0.0], [2000.0, 2000.0], model, policy(config, min_churn_risk=0.5))
    assert out["action"].tolist() == ["none", "winback_coupon"]


def test_win_back_means_at_risk_by_default(config):
    """Unset, the threshold is the at-risk one (decisions.churn_threshold, 0.3): an active member with a
    large value gets no coupon however much the uplift model promises; 0 lets every member in."""
    model = UpliftModel([], prior_uplift=0.2, prior_redeem=0.9)
    assert config.winback.min_churn_risk is None and config.decisions.churn_threshold == 0.3
    out = decide(members(), [0.29, 0.3], [0.0, 0.0], [5000.0, 5000.0], model, policy(config))
    assert out["action"].tolist() == ["none", "winback_coupon"]
    everyone = decide(members(), [0.29, 0.3], [0.0, 0.0], [5000.0, 5000.0], model, policy(config, min_churn_risk=0.0))
    assert everyone["action"].tolist() == ["winback_coupon", "winback_coupon"]


def test_a_regular_replenisher_gets_a_subscription_offer_naming_category_and_cycle(config):
    model = UpliftModel([], prior_uplift=0.0, prior_redeem=0.9)
    out = decide(members(), [0.1, 0.1], [0.9, 0.9], [800.0, 800.0], model, policy(config))
    assert out.loc["a", "action"] == "subscription_offer" and out.loc["a", "offer_detail"] == "母婴 每30天"
    s = config.subscription
    assert out.loc["a", "expected_value"] == pytest.approx(s.uplift * 800.0 * 0.5 - s.send_cost)
    assert out.loc["a", "uplift_source"] == ""  # no coupon, no coupon uplift


def test_no_subscription_offer_to_a_subscriber_or_an_irregular_buyer(config):
    model = UpliftModel([], prior_uplift=0.0, prior_redeem=0.9)
    subscribed = members(active_subscriptions=[1, 0], cycle_cv_baby=[0.1, 0.9], cycle_cv_beauty=[np.nan, 0.9])
    out = decide(subscribed, [0.1, 0.1], [0.9, 0.9], [800.0, 800.0], model, policy(config))
    assert (out["action"] == "none").all()


def test_segments_cross_lifecycle_and_value_by_the_configured_rule(config):
    value = np.array([50.0, 600.0, 200.0, 200.0])
    churn = np.array([0.1, 0.4, 0.7, 0.9])
    tenure = np.array([10.0, 200.0, 200.0, 200.0])
    stage = decisions.lifecycle(tenure, churn, config)
    assert decisions.segment(stage, value, config).tolist() == [
        "new_low",
        "at_risk_high",
        "sleeping_potential",
        "lost_potential",
    ]


# --- the budgeted list ---------------------------------------------------------------------------


def scored_members(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ev = rng.normal(5.0, 10.0, n)
    action = np.where(rng.random(n) < 0.8, "winback_coupon", "subscription_offer")
    return pd.DataFrame(
        {"action": np.where(ev > 0, action, "none"), "expected_value": np.maximum(ev, 0), "cost": rng.uniform(1, 5, n)},
        index=pd.Index([f"M{i:05d}" for i in range(n)], name="member_id"),
    )


def with_budget(config, budget: float, holdout: float = 0.05):
    return dataclasses.replace(
        config,
        winback=dataclasses.replace(config.winback, daily_budget=budget),
        decisions=dataclasses.replace(config.decisions, holdout_share=holdout),
    )


def test_the_budget_buys_the_best_expected_value_per_cost_and_is_never_overspent(config):
    scored = scored_members(5000)
    status = decisions.choose(scored, pd.Series(dtype=object), pd.Timestamp("2025-06-01"), with_budget(config, 2000.0))
    contacted = scored[status == decisions.CONTACT]
    assert 0 < contacted["cost"].sum() <= 2000.0
    ratio = scored["expected_value"] / scored["cost"]
    left_out = scored[status == decisions.OVER_BUDGET]
    assert ratio[contacted.index].min() >= ratio[left_out.index].max()
    # a larger budget contacts more; no member without positive expected value, whatever the budget
    unlimited = decisions.choose(scored, pd.Series(dtype=object), pd.Timestamp("2025-06-01"), with_budget(config, 1e12))
    assert (unlimited == decisions.CONTACT).sum() > len(contacted)
    assert (scored.loc[unlimited.isin([decisions.CONTACT, decisions.CONTROL]), "expected_value"] > 0).all()
    assert (unlimited[scored["action"] == "none"] == decisions.NO_ACTION).all()


def test_a_random_control_group_is_held_out_at_no_cost_and_is_the_same_on_a_rerun(config):
    scored = scored_members(20000)
    day = pd.Timestamp("2025-06-01")
    status = decisions.choose(scored, pd.Series(dtype=object), day, with_budget(config, 1e12))
    chosen = status.isin([decisions.CONTACT, decisions.CONTROL])
    share = (status == decisions.CONTROL).sum() / chosen.sum()
    assert share == pytest.approx(0.05, abs=0.01)
    # held out at random: their expected value looks like the contacted members'
    assert scored.loc[status == decisions.CONTROL, "expected_value"].mean() == pytest.approx(
        scored.loc[status == decisions.CONTACT, "expected_value"].mean(), rel=0.1
    )
    assert status.equals(decisions.choose(scored, pd.Series(dtype=object), day, with_budget(config, 1e12)))
    other_day = decisions.choose(scored, pd.Series(dtype=object), day + pd.Timedelta(days=1), with_budget(config, 1e12))
    assert not other_day.equals(status)  # a member is not held out every day
    # controls cost nothing: with a budget, the contacts alone spend it
    budgeted = decisions.choose(scored, pd.Series(dtype=object), day, with_budget(config, 3000.0))
    assert 3000.0 - 5.0 < scored.loc[budgeted == decisions.CONTACT, "cost"].sum() <= 3000.0


def test_blocked_members_are_never_listed(config):
    scored = scored_members(100)
    blocked = pd.Series("", index=scored.index, dtype=object)
    blocked.iloc[:50] = "suppressed:opted_out"
    status = decisions.choose(scored, blocked, pd.Timestamp("2025-06-01"), with_budget(config, 1e12, holdout=0.0))
    worth = scored["expected_value"] > 0
    assert (status[:50][worth[:50]] == "suppressed:opted_out").all()
    assert (status[50:][worth[50:]] == decisions.CONTACT).all()


# --- contact rules -------------------------------------------------------------------------------


def offers_frame(rows):
    """Offers from (member_id, sent_at, offer_type, treated) tuples."""
    frame = pd.DataFrame(
        [
            {"offer_id": f"x{i}", "member_id": m, "sent_at": pd.Timestamp(at), "offer_type": kind, "treated": t}
            for i, (m, at, kind, t) in enumerate(rows)
        ]
    )
    frame["sent_at"] = frame["sent_at"].astype("datetime64[us]")
    return frame.assign(value=10.0, redeemed_at=pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us]"))


def test_contact_rules_cooldown_frequency_cap_and_suppressions(tmp_path, config):
    people = ["cool", "capped", "control", "old", "opted", "expired", "free"]
    orders = orders_frame([(m, "2025-01-05", 100.0) for m in people])
    offers = offers_frame(
        [
            ("cool", "2025-05-20", "winback_coupon", True),  # 12 days before: cooling down
            ("capped", "2025-05-10", "subscription", True),
            ("capped", "2025-05-25", "subscription", True),  # two contacts in 30 days
            ("control", "2025-05-20", "winback_coupon", False),  # held out 12 days before: still measured
            ("old", "2025-03-01", "winback_coupon", True),  # long ago
            ("free", "2025-06-01", "winback_coupon", True),  # on the day: not known before it
        ]
    )
    until = pd.Series([pd.NaT, pd.Timestamp("2025-05-01")], dtype="datetime64[us]")
    suppressions = pd.DataFrame(
        {"member_id": ["opted", "expired"], "reason": ["opted_out", "legal_hold"], "until": until}
    )
    ds = make_dataset(tmp_path, {"orders": orders, "offers": offers, "suppressions": suppressions}, "2025-06-02")
    actions = pd.Series("winback_coupon", index=pd.Index(people, name="member_id"))
    blocked = contact.blocked(ds, pd.Timestamp("2025-06-01"), actions, config)
    assert blocked.to_dict() == {
        "cool": "cooldown",
        "capped": "frequency_cap",
        "control": "cooldown",  # a control assignment counts: no coupon while the member is a control
        "old": "",
        "opted": "suppressed:opted_out",
        "expired": "",
        "free": "",
    }
    # the cool-down holds back coupons only; a subscription offer may still go out
    offer = pd.Series("subscription_offer", index=actions.index)
    assert contact.blocked(ds, pd.Timestamp("2025-06-01"), offer, config)["cool"] == ""


def test_an_order_a_coupon_adds_is_worth_its_margin_plus_the_value_it_keeps_not_a_year():
    """Units: the uplift is an extra P(an order in the window), so it multiplies what one extra buyer is
    worth: the order's margin, plus the members kept per extra buyer x the margin of a member who stays,
    buying as they did before they lapsed."""
    model = ValueModel(btyd.BGNBD(r=0.25, alpha=4.0, a=0.8, b=2.5), btyd.GammaGamma(p=6.0, q=4.0, gamma=15.0), 365, 0.3)
    summary = {  # weeks: bought on 20 days up to last week; bought on 10 days, the last a year ago
        "x": np.array([20.0, 10.0]),
        "t_x": np.array([52.0, 10.0]),
        "T": np.array([53.0, 62.0]),
        "spend_per_day": np.array([200.0, 200.0]),
    }
    margin = model.gamma_gamma.expected_spend(summary["x"], summary["spend_per_day"]) * 0.3
    alive = model.bgnbd.p_alive(summary["x"], summary["t_x"], summary["T"])
    assert alive[0] > 0.9 and alive[1] < 0.2
    weeks = 365 / 7
    as_before = model.bgnbd.expected_purchases(summary["x"], summary["t_x"], summary["t_x"], weeks, alive=np.ones(2))
    since = model.bgnbd.expected_purchases(summary["x"], summary["t_x"], summary["T"], weeks, alive=np.ones(2))
    # a member won back buys as before the lapse, not at the rate a year of silence implies if alive
    assert as_before[1] > 2 * since[1] and as_before[0] == pytest.approx(since[0], rel=0.05)

    worth = model.order_worth(summary)  # by default kept = 1 - P(alive)
    np.testing.assert_allclose(worth, margin * (1 + (1 - alive) * as_before))
    assert margin[0] < worth[0] < model.value(summary)[0] / 5  # the frequent buyer: an order and a little more
    assert worth[1] - margin[1] > margin[1]  # the lapsing one: mostly the value a win-back keeps

    measured = model.order_worth(summary, kept=0.5)  # measured on campaigns: half a member kept per extra buyer
    np.testing.assert_allclose(measured, margin * (1 + 0.5 * as_before))
    assert model.order_worth(summary, kept=0.0) == pytest.approx(margin)  # keeps nobody: the order alone


@pytest.mark.slow
def test_a_control_stays_a_control_for_a_response_window(config):
    """Run the daily choice over 60 days: a member held out on a day is not contacted in the response
    window after it (14 days), and over the days every member is contacted sometimes."""
    ids = pd.Index([f"m{i:03d}" for i in range(400)], name="member_id")
    scored = pd.DataFrame({"action": "winback_coupon", "expected_value": 10.0, "cost": 1.0}, index=ids)
    cfg = dataclasses.replace(
        config,
        decisions=dataclasses.replace(config.decisions, holdout_share=0.2),
        winback=dataclasses.replace(config.winback, daily_budget=1e9, response_days=14),
    )
    days = pd.date_range("2025-03-01", periods=60)
    status = pd.DataFrame({day: decisions.choose(scored, pd.Series("", index=ids), day, cfg) for day in days})
    window = pd.Timedelta(days=14)
    held = 0
    for day in days:
        for member in status.index[status[day] == decisions.CONTROL]:
            later = status.loc[member, [d for d in days if day < d <= day + window]]
            assert (later != decisions.CONTACT).all(), (member, day)
            held += 1
    assert held > 0 and (status == decisions.CONTACT).any(axis=1).mean() > 0.9


def test_a_reason_shows_its_value_as_an_agent_reads_it():
    from retain import reason_text

    shown = [reason_text.shown_value(v) for v in (2.049e-16, 0.0025, 3.14159, 12345.6, float("nan"))]
    assert shown == ["0", "0.0025", "3.142", "12,346", "—"]
    sentence = reason_text.describe("bgnbd_expected_purchases", 2.049e-16, "raises", "en", {})
    assert "e-16" not in sentence and sentence.endswith("= 0 (raises churn risk)"), sentence
