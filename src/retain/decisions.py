"""From scores to an action per member, with its expected value and a CRM segment.

This is the plain-threshold policy (`[decisions]`, `[winback]`, `[subscription]` in retain.toml) that
the scorer applies until the uplift-based policy lands:

- member value: BG/NBD expected purchases over `decisions.value_horizon_days` x mean order value x
  `decisions.margin_rate`;
- win-back coupon when churn risk >= `decisions.churn_threshold`; expected value
  `winback.prior_uplift` x value - (`winback.send_cost` + `winback.redeem_rate` x coupon value);
- subscription offer when repurchase probability >= `decisions.repurchase_threshold`, the member buys
  a replenishment category on a regular cycle (cv <= `subscription.max_cycle_cv`) and holds no
  subscription; expected value `subscription.uplift` x value;
- the eligible action with the highest positive expected value, else none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retain import btyd
from retain.config import Config

LIFECYCLE_NEW_DAYS = 30
LIFECYCLE_CHURN_BANDS = ((0.3, "active"), (0.6, "at_risk"), (0.85, "sleeping"), (1.01, "lost"))


def member_value(features: pd.DataFrame, bgnbd: btyd.BGNBD, config: Config) -> pd.Series:
    """Expected margin over the value horizon, in the shop's currency."""
    summary = btyd.summary_from_features(features)
    weeks = config.decisions.value_horizon_days / btyd.DAYS_PER_WEEK
    purchases = bgnbd.expected_purchases(summary["x"], summary["t_x"], summary["T"], weeks)
    return pd.Series(
        purchases * features["monetary_mean"].to_numpy() * config.decisions.margin_rate, index=features.index
    )


def segment(features: pd.DataFrame, churn_risk: np.ndarray, value: pd.Series, config: Config) -> np.ndarray:
    """Lifecycle (new, active, at_risk, sleeping, lost) crossed with value (high, potential, low)."""
    lifecycle = np.select(
        [churn_risk < upper for upper, _ in LIFECYCLE_CHURN_BANDS], [name for _, name in LIFECYCLE_CHURN_BANDS], "lost"
    )
    lifecycle = np.where(features["tenure_days"].to_numpy() < LIFECYCLE_NEW_DAYS, "new", lifecycle)
    d = config.decisions
    tier = np.where(value >= d.high_value, "high", np.where(value >= d.low_value, "potential", "low"))
    return np.char.add(np.char.add(lifecycle.astype(str), "_"), tier.astype(str))


def regular_cycle(features: pd.DataFrame, config: Config) -> tuple[pd.Series, pd.Series]:
    """Each member's most regular replenishment category and its cycle in days (NaN without one)."""
    slugs = [config.data.categories.get(name, name) for name in config.data.replenishment_categories]
    cv = features.reindex(columns=[f"cycle_cv_{s}" for s in slugs]).to_numpy(dtype=float, na_value=np.nan)
    days = features.reindex(columns=[f"cycle_days_{s}" for s in slugs]).to_numpy(dtype=float, na_value=np.nan)
    has = ~np.all(np.isnan(cv), axis=1)
    best = np.argmin(np.where(np.isnan(cv), np.inf, cv), axis=1)
    rows = np.arange(len(features))
    names = np.asarray(config.data.replenishment_categories, dtype=object)
    category = pd.Series(np.where(has, names[best], None), index=features.index)
    cycle = pd.Series(np.where(has, days[rows, best], np.nan), index=features.index)
    best_cv = np.where(has, cv[rows, best], np.nan)
    return category.where(best_cv <= config.subscription.max_cycle_cv), cycle.where(
        best_cv <= config.subscription.max_cycle_cv
    )


def decide(features: pd.DataFrame, scores: pd.DataFrame, bgnbd: btyd.BGNBD, config: Config) -> pd.DataFrame:
    """segment, action, offer_detail, expected_value and value per member (index member_id)."""
    value = member_value(features, bgnbd, config)
    w, s, d = config.winback, config.subscription, config.decisions
    churn, repurchase = scores["churn_risk"].to_numpy(), scores["repurchase_prob"].to_numpy()
    winback_ev = np.where(
        churn >= d.churn_threshold, w.prior_uplift * value - (w.send_cost + w.redeem_rate * w.coupon_value), -np.inf
    )
    category, cycle = regular_cycle(features, config)
    subscribed = features.get("active_subscriptions", pd.Series(0, index=features.index)).fillna(0).to_numpy() > 0
    eligible = (repurchase >= d.repurchase_threshold) & category.notna().to_numpy() & ~subscribed
    subscription_ev = np.where(eligible, s.uplift * value, -np.inf)
    best = np.maximum(winback_ev, subscription_ev)
    action = np.where(
        best <= 0, "none", np.where(winback_ev >= subscription_ev, "winback_coupon", "subscription_offer")
    )
    detail = np.where(
        action == "winback_coupon",
        w.coupon_label,
        np.where(
            action == "subscription_offer",
            category.fillna("").astype(str) + " every " + cycle.round().fillna(0).astype(int).astype(str) + " days",
            "",
        ),
    )
    return pd.DataFrame(
        {
            "segment": segment(features, churn, value, config),
            "action": action,
            "offer_detail": detail,
            "expected_value": np.where(action == "none", 0.0, best),
            "value": value.to_numpy(),
        },
        index=features.index,
    )
