"""The latent purchase process of the simulated shop, shared by the simulator and its oracle.

Each member, once joined, is *active*, then *disengaging*, then *dead* (a Markov chain in days).
While alive, a member places at most one ordinary order a day with probability 1 - exp(-intensity),
intensity = purchase rate x season x stage factor x coupon effect; members with a replenishment
category also renew it on a gamma-distributed cycle. Disengaging members buy and browse less
before they stop: behaviour carries real but noisy signal. A disengaging member who orders while
holding a win-back coupon is won back (active again): that is what a win-back coupon is worth.
The oracle uses the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from retain import promotions

CATEGORIES = ("家电3C", "美妆个护", "服饰鞋包", "食品", "母婴", "家居智能", "健康器械")
REPLENISHMENT = ("母婴", "美妆个护", "食品")
PRICE_FACTOR = np.array([2.6, 1.0, 1.3, 0.45, 0.9, 1.9, 1.5])  # order value relative to the member's level
CYCLE_DAYS = np.array([14, 21, 30, 45, 60])


@dataclass(frozen=True)
class ShopProcess:
    """Fixed parameters of the simulated shop (member-level rates are drawn around them)."""

    mean_daily_rate: float = 0.024  # ordinary orders a day while active (about 8.8 a year)
    rate_shape: float = 0.9  # gamma heterogeneity of the rate
    mean_active_days: float = 500.0  # mean time before a member starts to disengage
    lifetime_shape: float = 1.2
    disengaging_days: float = 60.0  # mean length of the disengaging stage before dropout
    disengaged_purchase_factor: float = 0.35
    disengaged_browse_factor: float = 0.2
    refund_share: float = 0.06  # of ordinary orders
    promo_only_share: float = 0.10  # members who buy almost only during promotions
    cycle_buyer_share: float = 0.30  # members with a replenishment cycle
    cycle_shape: float = 16.0  # gamma shape of cycle gaps (coefficient of variation 0.25)
    browse_per_order: float = 2.6  # browsing events a day per unit of purchase rate
    coupon_days: int = 14  # a win-back coupon is valid for this many days after sending
    campaign_every_days: int = 30
    campaign_min_recency_days: int = 60  # members this long without an order are campaign targets
    campaign_share: float = 0.15
    control_share: float = 0.2  # of targeted members, held out at random
    # the shop's promotions (618, Double 11), as `data.promotion_windows` writes them; `retain simulate`
    # sets them from retain.toml, so the simulated shop and the features share one calendar
    promotion_windows: tuple[tuple[str, str], ...] = (("06-01", "06-18"), ("11-01", "11-11"))
    coupon_values: tuple[float, ...] = (10.0, 30.0, 50.0)
    coupon_thresholds: tuple[float, ...] = (100.0, 200.0, 300.0)
    join_share_of_period: float = 0.92  # members join uniformly over this share of the period
    join_order_probability: float = 0.8  # a new member orders on the day of joining
    # a regime change (`retain simulate --shift DAY:KIND`), from day `shift_day` of the simulation on: "browsing"
    # (a tracking change: members browse as before, half of their events are recorded) or "disengagement"
    # (members start to disengage SHIFT_DISENGAGE_FACTOR times as fast; the truth keeps the rate before it,
    # so the oracle is optimistic after the day). -1: no change.
    shift_day: int = -1
    shift_kind: str = ""


SHIFT_KINDS = ("browsing", "disengagement")
SHIFT_BROWSE_FACTOR = 0.5
SHIFT_DISENGAGE_FACTOR = 3.0


PROCESS = ShopProcess()


def promotion_days(days: pd.DatetimeIndex, process: ShopProcess = PROCESS) -> np.ndarray:
    """True on the process's promotion days."""
    return promotions.in_windows(days, process.promotion_windows)


def season(days: pd.DatetimeIndex, process: ShopProcess = PROCESS) -> tuple[np.ndarray, np.ndarray]:
    """Daily intensity multipliers (regular members, promotion-only members), peaking on the last three days
    of each promotion (6/16-6/18, 11/9-11/11)."""
    promo = promotion_days(days, process)
    peak = promotions.last_days(days, process.promotion_windows, 3)
    regular = 1.0 + 0.8 * promo + 2.0 * peak
    promo_only = np.where(promo, 5.0, 0.06) + 6.0 * peak
    return regular, promo_only


def coupon_multiplier(response: np.ndarray, value: np.ndarray) -> np.ndarray:
    """A coupon's effect on the ordinary-order intensity: `response` at a 30-yuan coupon, scaled by value."""
    return 1.0 + (response - 1.0) * np.sqrt(value / 30.0)


def cycle_hazard_table(process: ShopProcess = PROCESS, max_days: int = 800) -> np.ndarray:
    """P(renewal on day e | none for e days) for each cycle length: rows follow CYCLE_DAYS."""
    e = np.arange(max_days + 1)
    table = np.empty((len(CYCLE_DAYS), max_days + 1))
    for i, mean in enumerate(CYCLE_DAYS):
        dist = stats.gamma(process.cycle_shape, scale=mean / process.cycle_shape)
        survive_now, survive_next = dist.sf(e), dist.sf(e + 1)
        table[i] = np.where(survive_now > 1e-12, 1.0 - survive_next / np.maximum(survive_now, 1e-300), 1.0)
    return table
