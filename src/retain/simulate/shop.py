"""A Tmall-style flagship store, simulated day by day for chunks of members, with ground truth.

`simulate_shop` writes a canonical dataset (orders, members, events, offers, subscriptions) plus
`truth.parquet`, which holds each member's latent rates, stage dates, cycle and coupon response.
The run is deterministic for a seed and writes one chunk of members at a time to bound memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from retain import contract as c
from retain.config import DEFAULT_BUCKETS
from retain.dataset import atomic_folder, write_buckets, write_metadata
from retain.simulate import process as proc
from retain.simulate.state import History, Members
from retain.simulate.tables import chunk_tables

CHUNK_MEMBERS = 100_000
DEFAULT_START = "2024-01-01"
RESPONSE_SHARES = (0.35, 0.50, 0.15)
TIER_SHARES = (0.45, 0.25, 0.15, 0.10, 0.05)  # bronze .. diamond

TABLE_SCHEMAS = {
    "orders": pa.schema(
        [
            (c.ORDER_ID, pa.string()),
            (c.MEMBER_ID, pa.string()),
            (c.ORDERED_AT, pa.timestamp("us")),
            (c.AMOUNT, pa.float64()),
            (c.CATEGORY, pa.string()),
            (c.QUANTITY, pa.int64()),
            (c.COUPON_ID, pa.string()),
            (c.STATUS, pa.string()),
            (c.REFUNDED_AT, pa.timestamp("us")),
        ]
    ),
    "members": pa.schema(
        [
            (c.MEMBER_ID, pa.string()),
            (c.JOINED_AT, pa.timestamp("us")),
            (c.TIER, pa.string()),
            (c.TIER_SINCE, pa.timestamp("us")),
        ]
    ),
    "events": pa.schema(
        [
            (c.MEMBER_ID, pa.string()),
            (c.EVENT_AT, pa.timestamp("us")),
            (c.EVENT_TYPE, pa.string()),
            (c.CATEGORY, pa.string()),
        ]
    ),
    "offers": pa.schema(
        [
            (c.OFFER_ID, pa.string()),
            (c.MEMBER_ID, pa.string()),
            (c.SENT_AT, pa.timestamp("us")),
            (c.OFFER_TYPE, pa.string()),
            (c.TREATED, pa.bool_()),
            (c.VALUE, pa.float64()),
            (c.REDEEMED_AT, pa.timestamp("us")),
        ]
    ),
    "subscriptions": pa.schema(
        [
            (c.MEMBER_ID, pa.string()),
            (c.CATEGORY, pa.string()),
            (c.STARTED_AT, pa.timestamp("us")),
            (c.ENDED_AT, pa.timestamp("us")),
        ]
    ),
    "suppressions": pa.schema([(c.MEMBER_ID, pa.string()), (c.REASON, pa.string()), (c.UNTIL, pa.timestamp("us"))]),
}


def draw_members(rng: np.random.Generator, n: int, days: int, p: proc.ShopProcess) -> Members:
    repl = np.array([proc.CATEGORIES.index(name) for name in proc.REPLENISHMENT])
    join_day = rng.integers(0, int(days * p.join_share_of_period), n)
    rate = rng.gamma(p.rate_shape, p.mean_daily_rate / p.rate_shape, n)
    active_days = rng.gamma(p.lifetime_shape, p.mean_active_days / p.lifetime_shape, n)
    has_cycle = rng.random(n) < p.cycle_buyer_share
    cycle = np.where(has_cycle, rng.integers(0, len(proc.CYCLE_DAYS), n), -1)
    mix = rng.dirichlet(np.full(len(proc.CATEGORIES), 0.4), n)
    cycle_category = np.where(has_cycle, repl[(mix[:, repl]).argmax(axis=1)], -1)
    spend_level = rng.gamma(3.0, 150.0 / 3.0, n)
    response_type = _response_types(rng.random(n), spend_level)
    response = np.choose(response_type, [1.0 + rng.uniform(1.0, 3.0, n), np.ones(n), np.full(n, 0.5)])
    value_score = np.log(rate * spend_level) + rng.normal(0, 0.5, n)
    tier = np.searchsorted(np.quantile(value_score, np.cumsum(TIER_SHARES)[:-1]), value_score)
    return Members(
        join_day=join_day,
        promo_only=rng.random(n) < p.promo_only_share,
        rate=rate,
        p_disengage=1.0 - np.exp(-1.0 / active_days),
        browse_rate=p.browse_per_order * rate * rng.lognormal(0, 0.3, n),
        cycle=cycle,
        cycle_category=cycle_category,
        first_renewal=join_day - rng.integers(0, 60, n) % np.where(has_cycle, proc.CYCLE_DAYS[cycle], 1),
        mix_cdf=np.cumsum(mix, axis=1).astype(np.float32),
        spend_level=spend_level,
        response_type=response_type,
        response=response,
        tier=tier,
    )


def _response_types(u: np.ndarray, spend_level: np.ndarray) -> np.ndarray:
    """Coupon response by price sensitivity: low spenders are more often persuadable, high spenders
    more often sleeping dogs (a coupon annoys them); the shares average RESPONSE_SHARES."""
    s = stats.gamma.cdf(spend_level, 3.0, scale=150.0 / 3.0)  # the member's spend level as a quantile
    persuadable = RESPONSE_SHARES[0] + 0.4 * (0.5 - s)
    sleeping_dog = RESPONSE_SHARES[2] - 0.2 * (0.5 - s)
    return np.where(u < persuadable, 0, np.where(u < 1.0 - sleeping_dog, 1, 2))


def run_days(rng: np.random.Generator, m: Members, calendar: pd.DatetimeIndex, p: proc.ShopProcess) -> History:
    """Step every member through the calendar: orders, renewals, browsing, campaigns, stage changes."""
    n, days = len(m.rate), len(calendar)
    season_regular, season_promo = proc.season(calendar, p)
    hazard = proc.cycle_hazard_table(p, max_days=days + 60)
    joined_order = np.argsort(m.join_day, kind="stable")
    h = History(*([] for _ in range(12)), disengaged_day=np.full(n, -1), died_day=np.full(n, -1))
    state = np.zeros(n, dtype=np.int8)  # 1 active, 2 disengaging, 3 dead
    last_renewal = m.first_renewal.copy()
    last_order = np.full(n, -10_000)
    last_offer = np.full(n, -10_000)
    coupon_until = np.full(n, -1)
    coupon_mult = np.ones(n)
    live = np.empty(0, dtype=np.int64)
    joined = 0
    for d in range(days):
        new = joined + np.searchsorted(m.join_day[joined_order[joined:]], d, side="right")
        if new > joined:
            arrivals = joined_order[joined:new]
            state[arrivals] = 1
            live = np.concatenate([live, arrivals])
            first = arrivals[rng.random(len(arrivals)) < p.join_order_probability]
            _append(h, first, d, 2)
            last_order[first] = d
            joined = new
        if len(live) == 0:
            continue
        active = state[live] == 1
        stage = np.where(active, 1.0, p.disengaged_purchase_factor)
        seasonal = np.where(m.promo_only[live], season_promo[d], season_regular[d])
        intensity = m.rate[live] * seasonal * stage * np.where(coupon_until[live] >= d, coupon_mult[live], 1.0)
        buys = live[rng.random(len(live)) < -np.expm1(-intensity)]
        cycle = m.cycle[live]
        gap = np.minimum(d - last_renewal[live], hazard.shape[1] - 1)
        renew_p = np.where(cycle >= 0, hazard[np.maximum(cycle, 0), gap], 0.0) * stage
        renews = live[rng.random(len(live)) < renew_p]
        last_renewal[renews] = d
        _append(h, buys, d, 0)
        _append(h, renews, d, 1)
        h.renewal_member.append(renews)
        h.renewal_day.append(np.full(len(renews), d, dtype=np.int32))
        last_order[buys] = d
        last_order[renews] = d
        browse_rate = m.browse_rate[live] * seasonal * np.where(active, 1.0, p.disengaged_browse_factor)
        browse = rng.poisson(browse_rate)
        h.browse_member.append(np.repeat(live, browse))
        h.browse_day.append(np.full(int(browse.sum()), d, dtype=np.int32))
        # A win-back coupon that brings a disengaging member to order wins the member back: active again.
        ordered = np.concatenate([buys, renews])
        won_back = ordered[(state[ordered] == 2) & (coupon_until[ordered] >= d)]
        state[won_back] = 1
        h.disengaged_day[won_back] = -1
        active = state[live] == 1
        # Stage changes happen at the end of the day: the new stage holds from the next day.
        u = rng.random(len(live))
        p_disengage = m.p_disengage[live]
        if 0 <= p.shift_day <= d and p.shift_kind == "disengagement":
            p_disengage = 1.0 - (1.0 - p_disengage) ** proc.SHIFT_DISENGAGE_FACTOR
        to_disengaging = live[active & (u < p_disengage)]
        dies = ~active & (u < 1.0 - np.exp(-1.0 / p.disengaging_days))
        state[to_disengaging] = 2
        h.disengaged_day[to_disengaging] = d + 1
        state[live[dies]] = 3
        h.died_day[live[dies]] = d + 1
        live = live[~dies]
        if d % p.campaign_every_days == p.campaign_every_days - 1:
            _campaign(rng, h, m, p, d, joined_order[:joined], last_order, last_offer, coupon_until, coupon_mult, state)
    return h


def _append(h: History, members: np.ndarray, day: int, kind: int) -> None:
    h.order_member.append(members)
    h.order_day.append(np.full(len(members), day, dtype=np.int32))
    h.order_kind.append(np.full(len(members), kind, dtype=np.int8))


def _campaign(rng, h, m, p, d, joined, last_order, last_offer, coupon_until, coupon_mult, state) -> None:
    """Send win-back coupons to a random share of lapsed members, holding out a control group."""
    lapsed = joined[(d - last_order[joined] >= p.campaign_min_recency_days) & (d - last_offer[joined] >= 60)]
    chosen = lapsed[rng.random(len(lapsed)) < p.campaign_share]
    value = np.array(p.coupon_values)[rng.integers(0, len(p.coupon_values), len(chosen))]
    treated = rng.random(len(chosen)) >= p.control_share
    last_offer[chosen] = d
    # The coupon is valid from the next day for coupon_days days.
    coupon_until[chosen[treated]] = d + p.coupon_days
    coupon_mult[chosen[treated]] = proc.coupon_multiplier(m.response[chosen[treated]], value[treated])
    h.offer_member.append(chosen)
    h.offer_day.append(np.full(len(chosen), d, dtype=np.int32))
    h.offer_value.append(value)
    h.offer_treated.append(treated)
    h.offer_stage.append(state[chosen].copy())  # after the day's stage changes: the stage from d + 1 on


def simulate_shop(
    out: Path,
    members: int,
    days: int,
    seed: int,
    start: pd.Timestamp | None = None,
    currency: str = "CNY",
    process: proc.ShopProcess = proc.PROCESS,
    on_chunk: Callable[[int, int], None] | None = None,
    buckets: int = DEFAULT_BUCKETS,
) -> dict:
    """Simulate `members` members over `days` days into the dataset folder `out`; return its metadata."""
    start = pd.Timestamp(start if start is not None else DEFAULT_START)
    calendar = pd.date_range(start, periods=days, freq="D")
    start_us = start.value // 1000
    width = max(7, len(str(members)))
    n_chunks = -(-members // CHUNK_MEMBERS)
    with atomic_folder(Path(out)) as folder:
        truth_writer = None
        try:
            for k in range(n_chunks):
                lo, hi = k * CHUNK_MEMBERS, min(members, (k + 1) * CHUNK_MEMBERS)
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))
                drawn = draw_members(rng, hi - lo, days, process)
                history = run_days(rng, drawn, calendar, process)
                tables = chunk_tables(rng, k, lo, drawn, history, calendar, start_us, width, process)
                for name, schema in TABLE_SCHEMAS.items():  # each chunk's rows into the member buckets
                    write_buckets(folder, name, tables[name].cast(schema), buckets, part=f"chunk-{k:04d}")
                truth_writer = truth_writer or pq.ParquetWriter(folder / "truth.parquet", tables["truth"].schema)
                truth_writer.write_table(tables["truth"])
                if on_chunk:
                    on_chunk(k + 1, n_chunks)
        finally:
            if truth_writer is not None:
                truth_writer.close()
        extra = {
            "source": "simulate",
            "simulator": {
                "members": members,
                "days": days,
                "seed": seed,
                "start": start.isoformat(),
                **({"shift": {"day": process.shift_day, "kind": process.shift_kind}} if process.shift_day >= 0 else {}),
            },
            "buckets": buckets,
        }
        metadata = write_metadata(folder, calendar[-1] + pd.Timedelta(days=1), currency, extra=extra)
    return metadata
