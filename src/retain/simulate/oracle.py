"""The oracle: each member's true probability of buying in a window, from the simulator's truth.

It knows what no model can: the member's latent rates, stage (active, disengaging, dead) and cycle
phase at `as_of`, and the coupons already sent, but not the future. It walks the same daily Markov
chain as the simulator, so a model that scores above it on simulated data has leaked the future.
Coupons sent at or after `as_of` are future and are not counted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from retain import contract as c
from retain.simulate import process as proc


def oracle_probabilities(
    truth: pd.DataFrame,
    as_of: pd.Timestamp,
    horizon_days: int,
    process: proc.ShopProcess = proc.PROCESS,
    coupon_value: float | None = None,
    stages: pd.Series | None = None,
) -> pd.DataFrame:
    """True P(churn) and P(repurchase) in [as_of, as_of + horizon_days) for every member joined before as_of.

    Parameters
    ----------
    truth : the simulator's `truth.parquet` (one row per member).
    coupon_value : if given, every member gets a win-back coupon of this value sent the day before
        `as_of` (valid from `as_of`, as the simulator's campaigns do): what would happen if we sent it.
    Returns a frame indexed by `member_id` with `p_churn` (no paid order in the window),
    `p_repurchase` (at least one) = 1 - p_churn, and `expected_orders`: paid orders, renewals of a
    replenishment cycle counted at their mean rate (1 / cycle days).

    The stage at `as_of` comes from `disengaged_day` and `died_day`, the last of each; a member won back
    by a coupon after `as_of` shows as active before it (rare: the latest figures are exact at the end).
    `stages` (1 active, 2 disengaging, 3 dead, by member_id) gives it instead where known: the stage of
    an offer's members on the day after it was sent (`offer_stage`).
    """
    start = pd.Timestamp(truth["sim_start"].iloc[0])
    a = (pd.Timestamp(as_of) - start).days
    t = truth[truth["join_day"] < a]
    calendar = pd.date_range(pd.Timestamp(as_of), periods=horizon_days, freq="D")
    season_regular, season_promo = proc.season(calendar, process)
    hazard = proc.cycle_hazard_table(process, max_days=a + horizon_days + 200)
    cycle_index = np.searchsorted(proc.CYCLE_DAYS, t["cycle_days"].to_numpy())
    has_cycle = t["cycle_days"].to_numpy() > 0
    last_renewal = _last_before(t["renewal_days"], a)
    coupon_until, coupon_mult = _coupon_in_force(t, a, process)
    if coupon_value is not None:
        coupon_until = np.full(len(t), a - 1 + process.coupon_days)
        coupon_mult = proc.coupon_multiplier(t["coupon_response"].to_numpy(), np.full(len(t), coupon_value))

    disengaged, died = t["disengaged_day"].to_numpy(), t["died_day"].to_numpy()
    dead = (died >= 0) & (died <= a)
    disengaging = ~dead & (disengaged >= 0) & (disengaged <= a)
    if stages is not None:
        known = stages.reindex(t[c.MEMBER_ID].astype(str)).to_numpy(dtype=float)
        dead = np.where(np.isnan(known), dead, known == 3)
        disengaging = np.where(np.isnan(known), disengaging, known == 2)
    q_active = (~dead & ~disengaging).astype(float)  # P(stage and no paid order so far)
    q_disengaging = disengaging.astype(float)
    q_dead = dead.astype(float)
    rate = t["purchase_rate"].to_numpy()
    promo_only = t["promo_only"].to_numpy()
    p_disengage = t["p_disengage"].to_numpy()
    p_die = 1.0 - np.exp(-1.0 / process.disengaging_days)
    factor = process.disengaged_purchase_factor
    s_active, s_disengaging = q_active.copy(), q_disengaging.copy()  # P(stage), orders or not
    renewal_rate = 1.0 / np.maximum(t["cycle_days"].to_numpy(), 1)  # renewals a day, on average
    expected_orders = np.zeros(len(t))
    for k in range(horizon_days):
        d = a + k
        seasonal = np.where(promo_only, season_promo[k], season_regular[k])
        intensity = rate * seasonal * np.where(coupon_until >= d, coupon_mult, 1.0)
        gap = np.minimum(d - last_renewal, hazard.shape[1] - 1)
        renew = np.where(has_cycle, hazard[np.maximum(cycle_index, 0), gap], 0.0)
        no_order_active = _no_paid_order(intensity, process) * (1.0 - renew)
        no_order_disengaging = _no_paid_order(intensity * factor, process) * (1.0 - renew * factor)
        stay_active = q_active * no_order_active
        stay_disengaging = q_disengaging * no_order_disengaging
        q_active = stay_active * (1.0 - p_disengage)
        q_disengaging = stay_disengaging * (1.0 - p_die) + stay_active * p_disengage
        q_dead = q_dead + stay_disengaging * p_die
        expected_orders += (1.0 - process.refund_share) * (
            s_active * -np.expm1(-intensity) + s_disengaging * -np.expm1(-intensity * factor)
        ) + np.where(has_cycle, renewal_rate, 0.0) * (s_active + s_disengaging * factor)
        # A disengaging member who orders while holding a coupon is won back (active again).
        any_order = 1.0 - np.exp(-intensity * factor) * (1.0 - renew * factor)
        won_back = s_disengaging * np.where(coupon_until >= d, any_order, 0.0)
        s_active, s_disengaging = s_active + won_back, s_disengaging - won_back
        s_active, s_disengaging = s_active * (1.0 - p_disengage), s_disengaging * (1.0 - p_die) + s_active * p_disengage
    p_churn = np.clip(q_active + q_disengaging + q_dead, 0.0, 1.0)
    return pd.DataFrame(
        {"p_churn": p_churn, "p_repurchase": 1.0 - p_churn, "expected_orders": expected_orders},
        index=pd.Index(t[c.MEMBER_ID].astype(str), name=c.MEMBER_ID),
    )


def _no_paid_order(intensity: np.ndarray, process: proc.ShopProcess) -> np.ndarray:
    """P(no paid ordinary order in a day): an order happens w.p. 1 - exp(-intensity), refunded w.p. refund_share."""
    return 1.0 - (1.0 - process.refund_share) * -np.expm1(-intensity)


def _last_before(days_lists: pd.Series, a: int) -> np.ndarray:
    """The last day in each member's list that is before day `a` (lists are sorted, anchor first)."""
    result = np.empty(len(days_lists), dtype=np.int64)
    for i, days in enumerate(days_lists.to_numpy()):
        days = np.asarray(days)
        result[i] = days[np.searchsorted(days, a, side="left") - 1] if len(days) and days[0] < a else -100_000
    return result


def _coupon_in_force(t: pd.DataFrame, a: int, process: proc.ShopProcess) -> tuple[np.ndarray, np.ndarray]:
    """For coupons sent before day `a`: the last valid day and multiplier of the latest one."""
    until = np.full(len(t), -1)
    mult = np.ones(len(t))
    for i, (days, mults) in enumerate(
        zip(t["treated_offer_days"].to_numpy(), t["treated_offer_multipliers"].to_numpy(), strict=True)
    ):
        days = np.asarray(days)
        sent = np.flatnonzero(days < a)
        if len(sent):
            until[i] = days[sent[-1]] + process.coupon_days
            mult[i] = np.asarray(mults)[sent[-1]]
    return until, mult


def offer_stage(truth: pd.DataFrame, sent_day: pd.Timestamp) -> pd.Series:
    """Each member offered something on `sent_day`, with the stage the offer found them in (1 active,
    2 disengaging, 3 dead), by member_id; for `oracle_probabilities(..., stages=)` on the day after."""
    s = (pd.Timestamp(sent_day).normalize() - pd.Timestamp(truth["sim_start"].iloc[0])).days
    stage = {}
    for member, days, stages in zip(truth[c.MEMBER_ID], truth["offer_days"], truth["offer_stages"], strict=True):
        hit = np.flatnonzero(np.asarray(days) == s)
        if len(hit):
            stage[str(member)] = int(np.asarray(stages)[hit[-1]])
    return pd.Series(stage, dtype=float, name="stage")


def oracle_for(dataset) -> Callable[[pd.Timestamp, int, str, pd.Index], np.ndarray] | None:
    """The true probabilities of a simulated shop's members as a backtest baseline (`backtest.Oracle`):
    None unless the dataset holds the shop simulator's `truth.parquet` (the BG/NBD generator has no
    oracle of this kind)."""
    path = dataset.path / "truth.parquet"
    if not path.exists() or "process" in dataset.metadata.get("simulator", {}):
        return None
    truth = pd.read_parquet(path)

    def oracle(as_of: pd.Timestamp, horizon_days: int, task: str, members: pd.Index) -> np.ndarray:
        column = "p_churn" if task == "churn" else "p_repurchase"
        return oracle_probabilities(truth, as_of, horizon_days)[column].reindex(members).to_numpy()

    return oracle
