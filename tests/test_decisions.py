import dataclasses

import numpy as np
import pandas as pd
import pytest

from retain import btyd, decisions

BGNBD = btyd.BGNBD(r=0.5, alpha=10.0, a=0.8, b=2.5)


def members(**overrides) -> pd.DataFrame:
    """Two regular buyers (a monthly 母婴 cycle); columns as features.build names them."""
    base = {
        "frequency": [12, 12],
        "first_purchase_days_ago": [360, 360],
        "last_purchase_days_ago": [20, 20],
        "monetary_mean": [300.0, 300.0],
        "tenure_days": [360.0, 360.0],
        "cycle_cv_baby": [0.1, 0.1],
        "cycle_days_baby": [30.2, 30.2],
        "cycle_cv_beauty": [np.nan, 0.5],
        "cycle_days_beauty": [np.nan, 20.0],
        "cycle_cv_food": [np.nan, np.nan],
        "cycle_days_food": [np.nan, np.nan],
        "active_subscriptions": [0, 0],
    }
    base.update(overrides)
    return pd.DataFrame(base, index=pd.Index(["a", "b"], name="member_id"))


def scores(churn, repurchase) -> pd.DataFrame:
    return pd.DataFrame({"churn_risk": churn, "repurchase_prob": repurchase}, index=pd.Index(["a", "b"]))


def test_a_likely_churner_worth_saving_gets_the_coupon(config):
    out = decisions.decide(members(), scores([0.9, 0.1], [0.1, 0.2]), BGNBD, config)
    assert out.loc["a", "action"] == "winback_coupon" and out.loc["a", "offer_detail"] == config.winback.coupon_label
    w = config.winback
    assert out.loc["a", "expected_value"] == pytest.approx(
        w.prior_uplift * out.loc["a", "value"] - (w.send_cost + w.redeem_rate * w.coupon_value)
    )
    assert out.loc["b", "action"] == "none" and out.loc["b", "expected_value"] == 0.0


def test_no_coupon_when_its_expected_value_is_negative(config):
    cheap = members(monetary_mean=[1.0, 1.0])
    out = decisions.decide(cheap, scores([0.95, 0.95], [0.0, 0.0]), BGNBD, config)
    assert (out["action"] == "none").all()


def test_a_regular_replenisher_gets_a_subscription_offer_naming_category_and_cycle(config):
    out = decisions.decide(members(), scores([0.1, 0.1], [0.9, 0.9]), BGNBD, config)
    assert out.loc["a", "action"] == "subscription_offer" and out.loc["a", "offer_detail"] == "母婴 every 30 days"
    assert out.loc["a", "expected_value"] == pytest.approx(config.subscription.uplift * out.loc["a", "value"])


def test_no_subscription_offer_to_a_subscriber_or_an_irregular_buyer(config):
    subscribed = members(active_subscriptions=[1, 0], cycle_cv_baby=[0.1, 0.9], cycle_cv_beauty=[np.nan, 0.9])
    out = decisions.decide(subscribed, scores([0.1, 0.1], [0.9, 0.9]), BGNBD, config)
    assert (out["action"] == "none").all()


def test_segments_cross_lifecycle_and_value(config):
    strict = dataclasses.replace(config, decisions=dataclasses.replace(config.decisions, high_value=1e9))
    out = decisions.decide(members(tenure_days=[10.0, 360.0]), scores([0.2, 0.5], [0.5, 0.1]), BGNBD, strict)
    assert out["segment"].tolist() == ["new_potential", "at_risk_potential"]
