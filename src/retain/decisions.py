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

from collections.abc import Callable

import numpy as np
import pandas as pd

from retain import btyd
from retain.config import Config

LIFECYCLE_NEW_DAYS = 30
LIFECYCLE_CHURN_BANDS = ((0.3, "active"), (0.6, "at_risk"), (0.85, "sleeping"), (1.01, "lost"))


def member_value(summary: dict[str, np.ndarray], bgnbd: btyd.BGNBD, config: Config) -> np.ndarray:
    """Expected margin over the value horizon, in the shop's currency (from the BTYD summary arrays)."""
    weeks = config.decisions.value_horizon_days / btyd.DAYS_PER_WEEK
    purchases = bgnbd.expected_purchases(summary["x"], summary["t_x"], summary["T"], weeks)
    return purchases * summary["monetary_mean"] * config.decisions.margin_rate


def segment(tenure_days: np.ndarray, churn_risk: np.ndarray, value: np.ndarray, config: Config) -> np.ndarray:
    """Lifecycle (new, active, at_risk, sleeping, lost) crossed with value (high, potential, low)."""
    lifecycle = np.select(
        [churn_risk < upper for upper, _ in LIFECYCLE_CHURN_BANDS], [name for _, name in LIFECYCLE_CHURN_BANDS], "lost"
    )
    lifecycle = np.where(tenure_days < LIFECYCLE_NEW_DAYS, "new", lifecycle)
    d = config.decisions
    tier = np.where(value >= d.high_value, "high", np.where(value >= d.low_value, "potential", "low"))
    return np.char.add(np.char.add(lifecycle.astype(str), "_"), tier.astype(str))


def regular_cycle(column: Columns, n: int, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Each member's most regular replenishment category and its cycle in days, where that cycle is
    regular enough (cv <= subscription.max_cycle_cv); None and NaN elsewhere."""
    slugs = [config.data.categories.get(name, name) for name in config.data.replenishment_categories]
    cv = np.column_stack([column(f"cycle_cv_{s}") for s in slugs]) if slugs else np.full((n, 1), np.nan)
    days = np.column_stack([column(f"cycle_days_{s}") for s in slugs]) if slugs else cv
    best = np.argmin(np.where(np.isnan(cv), np.inf, cv), axis=1)
    rows = np.arange(n)
    regular = cv[rows, best] <= config.subscription.max_cycle_cv  # False where every cv is missing
    names = np.asarray(config.data.replenishment_categories or [None], dtype=object)
    return np.where(regular, names[best], None), np.where(regular, days[rows, best], np.nan)


Columns = Callable[[str], np.ndarray]


def columns_of(features: pd.DataFrame, base: np.ndarray | None = None) -> Columns:
    """A feature column by name as float64 (all NaN when absent), read from `base`, the features as one
    float matrix, when the caller already has it (pandas column access is the slow part for one member)."""
    base = features.to_numpy(dtype=np.float64, na_value=np.nan) if base is None else base
    position = {name: i for i, name in enumerate(features.columns)}
    missing = np.full(len(features), np.nan)
    return lambda name: base[:, position[name]] if name in position else missing


def decide(features: pd.DataFrame, scores: pd.DataFrame, bgnbd: btyd.BGNBD, config: Config) -> pd.DataFrame:
    """segment, action, offer_detail, expected_value and value per member (index member_id)."""
    column = columns_of(features)
    summary = btyd.summary_arrays(*(column(name) for name in btyd.SUMMARY_INPUTS))
    churn, repurchase = scores["churn_risk"].to_numpy(), scores["repurchase_prob"].to_numpy()
    return pd.DataFrame(decide_arrays(column, summary, churn, repurchase, bgnbd, config), index=features.index)


def decide_arrays(
    column: Columns,
    summary: dict[str, np.ndarray],
    churn: np.ndarray,
    repurchase: np.ndarray,
    bgnbd: btyd.BGNBD,
    config: Config,
) -> dict[str, np.ndarray]:
    """`decide` on arrays, for the scoring path: the same columns, without building frames."""
    value = member_value(summary, bgnbd, config)
    w, s, d = config.winback, config.subscription, config.decisions
    coupon_cost = w.send_cost + w.redeem_rate * w.coupon_value
    winback_ev = np.where(churn >= d.churn_threshold, w.prior_uplift * value - coupon_cost, -np.inf)
    category, cycle = regular_cycle(column, len(churn), config)
    subscribed = np.nan_to_num(column("active_subscriptions")) > 0
    eligible = (repurchase >= d.repurchase_threshold) & (category != None) & ~subscribed  # noqa: E711
    subscription_ev = np.where(eligible, s.uplift * value, -np.inf)
    best = np.maximum(winback_ev, subscription_ev)
    action = np.where(
        best <= 0, "none", np.where(winback_ev >= subscription_ev, "winback_coupon", "subscription_offer")
    )
    detail = np.full(len(action), "", dtype=object)
    detail[action == "winback_coupon"] = w.coupon_label
    offers = np.flatnonzero(action == "subscription_offer")
    detail[offers] = [f"{category[i]} every {round(cycle[i])} days" for i in offers]
    return {
        "segment": segment(column("tenure_days"), churn, value, config),
        "action": action,
        "offer_detail": detail,
        "expected_value": np.where(action == "none", 0.0, best),
        "value": value,
    }
