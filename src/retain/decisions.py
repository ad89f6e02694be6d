"""From scores to decisions worth their cost: an action per member, and the budgeted daily list.

Per member (`decide_arrays`, called by the `Scorer`, so the service and the export agree):

- value: expected margin over `decisions.value_horizon_days` (`retain.value`: BG/NBD x Gamma-Gamma x margin);
- win-back coupon, for members with churn risk >= `winback.min_churn_risk` (default: the at-risk
  threshold `decisions.churn_threshold`): for each tier of `winback.coupon_tiers`, expected value =
  uplift x worth of an order - (send cost + P(redeem) x coupon value), the uplift (extra P(an order in
  the window)) from `retain.uplift`, the worth of that extra buyer their order's margin plus the members
  kept per extra buyer (measured on past campaigns, else the churn risk) x the margin of a member who
  stays (`ValueModel.order_worth`), P(redeem) = (P(buy anyway) + uplift) x the share
  of such buyers who redeem, P(buy anyway) from the repurchase probability; the best tier is the offer;
- subscription offer (周期购), for members who buy a replenishment category on a regular cycle (gap
  cv <= `subscription.max_cycle_cv`), are likely to buy again (>= `decisions.repurchase_threshold`) and
  hold no subscription: expected value = `subscription.uplift` x the member's value in that category
  (value x its share of orders) - `subscription.send_cost`;
- the eligible action with the highest positive expected value, else none;
- segment: lifecycle (new, active, at_risk, sleeping, lost, by the thresholds in `[decisions]`) crossed
  with value (high, potential, low).

For the daily list (`choose`): members whose action has positive expected value and no contact rule
against them, by expected value per unit cost, until `winback.daily_budget` is spent; a random
`decisions.holdout_share` of them is held out as the control group and costs nothing; the control group
is drawn per response window and the previous window's is not contacted, so a control stays one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retain import reason_text
from retain import uplift as uplift_model
from retain.config import Config
from retain.value import ValueModel

WINBACK, SUBSCRIPTION, NONE = "winback_coupon", "subscription_offer", "none"
# Status of each scored member in the daily export.
CONTACT, CONTROL, OVER_BUDGET, NO_ACTION = "contact", "control", "over_budget", "no_action"
HELD_OUT_BEFORE = "held_out_last_period"  # in the control group of the previous period: not contacted yet
EPOCH = pd.Timestamp("2000-01-03")  # the control group's periods count from this day


class Columns:
    """The features as one float64 matrix, read by name: `columns(name)` is a column (all NaN when the
    features lack it), `columns.matrix(names)` several side by side in one take. Pandas column access
    and `np.column_stack` are the slow part of scoring one member."""

    def __init__(self, features: pd.DataFrame, base: np.ndarray | None = None):
        self.base = features.to_numpy(dtype=np.float64, na_value=np.nan) if base is None else base
        self.position = {name: i for i, name in enumerate(features.columns)}
        self.n = len(features)

    def __call__(self, name: str) -> np.ndarray:
        return self.base[:, self.position[name]] if name in self.position else np.full(self.n, np.nan)

    def matrix(self, names: list[str]) -> np.ndarray:
        index = [self.position.get(name, -1) for name in names]
        if min(index, default=0) >= 0:
            return self.base[:, index]
        out = np.full((self.n, len(names)), np.nan)
        present = [j for j, i in enumerate(index) if i >= 0]
        out[:, present] = self.base[:, [index[j] for j in present]]
        return out


STAGES = ("active", "at_risk", "sleeping", "lost", "new")
VALUE_TIERS = ("low", "potential", "high")
SEGMENTS = np.array([f"{stage}_{tier}" for stage in STAGES for tier in VALUE_TIERS])


def lifecycle(tenure_days: np.ndarray, churn_risk: np.ndarray, config: Config) -> np.ndarray:
    """The index in STAGES: active < churn_threshold <= at_risk < sleeping_threshold <= sleeping <
    lost_threshold <= lost (thresholds in order: `DecisionsConfig` checks); members younger than
    new_member_days are new."""
    d = config.decisions
    thresholds = [d.churn_threshold, d.sleeping_threshold, d.lost_threshold]
    stage = np.searchsorted(thresholds, churn_risk, side="right")  # a missing risk sorts last: lost
    return np.where(tenure_days < d.new_member_days, STAGES.index("new"), stage)


def segment(stage: np.ndarray, value: np.ndarray, config: Config) -> np.ndarray:
    """Lifecycle (`stage`, from `lifecycle`) crossed with value: `<lifecycle>_<high|potential|low>`, e.g.
    `at_risk_high`."""
    d = config.decisions
    tier = (value >= d.low_value).astype(int) + (value >= d.high_value)
    return SEGMENTS[stage * len(VALUE_TIERS) + tier]


def regular_cycle(column: Columns, n: int, config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each member's most regular replenishment category, its cycle in days and its share of the member's
    orders, where that cycle is regular enough (cv <= subscription.max_cycle_cv); None / NaN elsewhere."""
    names = config.data.replenishment_categories
    slugs = [config.data.categories.get(name, name) for name in names]
    if not slugs:
        return np.full(n, None, dtype=object), np.full(n, np.nan), np.full(n, np.nan)
    cv = column.matrix([f"cycle_cv_{s}" for s in slugs])
    days = column.matrix([f"cycle_days_{s}" for s in slugs])
    share = column.matrix([f"cat_share_{s}" for s in slugs])
    best = np.argmin(np.where(np.isnan(cv), np.inf, cv), axis=1)
    rows = np.arange(n)
    regular = cv[rows, best] <= config.subscription.max_cycle_cv  # False where every cv is missing
    return (
        np.where(regular, np.asarray(names, dtype=object)[best], None),
        np.where(regular, days[rows, best], np.nan),
        np.where(regular, share[rows, best], np.nan),
    )


def p_buy_in_window(repurchase: np.ndarray, config: Config) -> np.ndarray:
    """P(a paid order within winback.response_days) without a coupon, from the repurchase probability
    over its own horizon at a constant daily hazard."""
    ratio = config.winback.response_days / config.labels.repurchase_horizon_days
    return 1.0 - np.power(np.clip(1.0 - repurchase, 0.0, 1.0), ratio)


def coupon_cost(
    model: uplift_model.UpliftModel, p_buy: np.ndarray, uplift: np.ndarray, coupon_value: float, config: Config
) -> np.ndarray:
    """The expected cost of sending a coupon: the send cost plus the discount of those who redeem it."""
    return config.winback.send_cost + model.p_redeem(p_buy, uplift) * coupon_value


def coupon_offer(
    matrix: np.ndarray,
    worth: np.ndarray,
    p_buy: np.ndarray,
    churn: np.ndarray,
    stage: np.ndarray,
    model: uplift_model.UpliftModel,
    config: Config,
) -> dict[str, np.ndarray]:
    """The best coupon tier per member: its expected value, cost, uplift and tier index. `p_buy` is each
    member's P(buy in the coupon's window) without one: those members redeem a coupon they did not need.
    `churn` (the churn risk) and `stage` (the index in STAGES) pick and scale the prior uplift where it is
    used (`UpliftModel.predict_tiers`)."""
    n = len(worth)
    best = {"ev": np.full(n, -np.inf), "cost": np.zeros(n), "uplift": np.zeros(n), "tier": np.zeros(n, dtype=int)}
    values = list(config.winback.coupon_tiers.values())
    reachable = 1.0 - np.nan_to_num(churn, nan=1.0)
    uplifts = model.predict_tiers(matrix, values, reachable, np.asarray(STAGES)[stage])
    for k, (coupon_value, uplift) in enumerate(zip(values, uplifts, strict=True)):
        cost = coupon_cost(model, p_buy, uplift, coupon_value, config)
        ev = uplift * worth - cost
        better = ev > best["ev"]
        for key, new in (("ev", ev), ("cost", cost), ("uplift", uplift), ("tier", k)):
            best[key] = np.where(better, new, best[key])
    return best


def winback_min_churn_risk(config: Config) -> float:
    """The churn risk from which a member may get a win-back coupon: `winback.min_churn_risk`, by default
    the at-risk threshold (`decisions.churn_threshold`)."""
    w = config.winback
    return config.decisions.churn_threshold if w.min_churn_risk is None else w.min_churn_risk


def decide_arrays(
    column: Columns,
    summary: dict[str, np.ndarray],
    churn: np.ndarray,
    repurchase: np.ndarray,
    value_model: ValueModel,
    uplift: uplift_model.UpliftModel,
    config: Config,
) -> dict[str, np.ndarray]:
    """segment, action, offer_detail, expected_value, cost, uplift, uplift_source and value per member (no
    budget)."""
    n = len(churn)
    value, worth = (np.nan_to_num(v) for v in value_model.value_and_worth(summary, uplift.kept(churn)))
    matrix = column.matrix(uplift.feature_names)
    stage = lifecycle(column("tenure_days"), churn, config)
    coupon = coupon_offer(matrix, worth, p_buy_in_window(repurchase, config), churn, stage, uplift, config)
    winback_ev = np.where(churn >= winback_min_churn_risk(config), coupon["ev"], -np.inf)

    s = config.subscription
    category, cycle, share = regular_cycle(column, n, config)
    subscribed = column("active_subscriptions") > 0  # a missing count is False, as 0
    eligible = (repurchase >= config.decisions.repurchase_threshold) & (category != None) & ~subscribed  # noqa: E711
    share = np.where(np.isnan(share), 0.0, share)
    subscription_ev = np.where(eligible, s.uplift * value * share - s.send_cost, -np.inf)

    best = np.maximum(winback_ev, subscription_ev)
    action = np.where(best <= 0, NONE, np.where(winback_ev >= subscription_ev, WINBACK, SUBSCRIPTION))
    is_coupon, is_subscription = action == WINBACK, action == SUBSCRIPTION
    detail = np.full(n, "", dtype=object)
    labels = np.asarray(list(config.winback.coupon_tiers), dtype=object)
    detail[is_coupon] = labels[coupon["tier"][is_coupon]]
    language = config.decisions.language
    detail[is_subscription] = [
        reason_text.subscription_offer(category[i], cycle[i], language) for i in np.flatnonzero(is_subscription)
    ]
    return {
        "segment": segment(stage, value, config),
        "action": action,
        "offer_detail": detail,
        "expected_value": np.where(action == NONE, 0.0, best),
        "cost": np.where(is_coupon, coupon["cost"], np.where(is_subscription, s.send_cost, 0.0)),
        "coupon_uplift": coupon["uplift"],
        # where a coupon is the action: `model` (the learnt uplift) or `prior` (outside past campaigns' reach)
        "uplift_source": np.where(is_coupon, uplift.sources(matrix), ""),
        "value": value,
    }


def holdout_draw(member_ids: pd.Index, as_of: pd.Timestamp, period_days: int) -> np.ndarray:
    """A uniform number in [0, 1) per member, fixed for the member within each period of `period_days`
    days (counted from EPOCH): a member held out on a day is held out on every day of its period, and
    the same run draws the same control group. See `choose` for the period after."""
    period = (pd.Timestamp(as_of).normalize() - EPOCH).days // period_days
    key = f"retain-{period}-"[:16].ljust(16, "-")
    hashed = pd.util.hash_pandas_object(pd.Series(member_ids.astype(str)), index=False, hash_key=key)
    return hashed.to_numpy(dtype=np.uint64) / np.float64(2**64)


def ranked(expected_value: np.ndarray, cost: np.ndarray, member_ids: np.ndarray) -> np.ndarray:
    """Positions in the order the budget takes members: expected value per unit cost, highest first,
    ties by member_id."""
    ratio = expected_value / np.maximum(cost, 1e-9)
    return np.lexsort((member_ids, -ratio))


def choose(scored: pd.DataFrame, blocked: pd.Series, as_of: pd.Timestamp, config: Config) -> pd.Series:
    """Status per member: contact, control (held out), over_budget, no_action, held_out_last_period, or the
    contact rule that blocks the member (`blocked`: empty where none). Members are ranked by expected value
    per unit cost (ties by member_id) and taken until the budget is spent; held-out members cost nothing.

    The control group is drawn per period of `winback.response_days` (`holdout_draw`), and the previous
    period's control group is not contacted: a member held out on a day gets no offer for at least one
    response window after it, so the control's outcomes stay a control's."""
    blocked = blocked.reindex(scored.index).fillna("")
    period, share = config.winback.response_days, config.decisions.holdout_share
    held_out = holdout_draw(scored.index, as_of, period) < share
    held_before = holdout_draw(scored.index, pd.Timestamp(as_of) - pd.Timedelta(days=period), period) < share
    # A control stays a control for a whole response window after its last day held out: the members of the
    # previous period's control group are not contacted in this one (unless held out again).
    blocked = blocked.where((blocked != "") | ~held_before | held_out, HELD_OUT_BEFORE)
    ev, cost = scored["expected_value"].to_numpy(), scored["cost"].to_numpy()
    candidate = (scored["action"].to_numpy() != NONE) & (ev > 0) & (blocked.to_numpy() == "")
    status = np.where(blocked.to_numpy() != "", blocked.to_numpy(), NO_ACTION).astype(object)
    status[(scored["action"].to_numpy() == NONE) | (ev <= 0)] = NO_ACTION
    rows = np.flatnonzero(candidate)
    rows = rows[ranked(ev[rows], cost[rows], scored.index.to_numpy()[rows])]
    held_out = held_out[rows]
    spent = np.cumsum(np.where(held_out, 0.0, cost[rows]))
    over = spent > config.winback.daily_budget
    first_over = int(np.argmax(over)) if over.any() else len(rows)
    status[rows] = OVER_BUDGET
    status[rows[:first_over]] = np.where(held_out[:first_over], CONTROL, CONTACT)
    return pd.Series(status, index=scored.index, name="status")
