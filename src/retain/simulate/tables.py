"""Turn one chunk's simulated history into the canonical tables and the truth table (Arrow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from retain import contract as c
from retain.simulate import process as proc
from retain.simulate.state import (
    BROWSE_TYPE_SHARES,
    BROWSE_TYPES,
    DAY_US,
    RESPONSE_TYPES,
    History,
    Members,
    ids,
    timestamps,
)

CATEGORY_NAMES = pa.array(proc.CATEGORIES)
TIER_NAMES = pa.array(c.TIERS)


def chunk_tables(
    rng: np.random.Generator,
    chunk: int,
    first_member: int,
    m: Members,
    h: History,
    calendar: pd.DatetimeIndex,
    start_us: int,
    width: int,
    p: proc.ShopProcess,
) -> dict[str, pa.Table]:
    n, days = len(m.rate), len(calendar)
    member_ids = ids("M", np.arange(first_member, first_member + n), width)
    end_us = start_us + days * DAY_US
    order_member = np.concatenate(h.order_member).astype(np.int64)
    order_day = np.concatenate(h.order_day)
    order_kind = np.concatenate(h.order_kind)
    order_seconds = rng.integers(8 * 3600, 86_400, len(order_member))
    ordered_us = start_us + order_day.astype(np.int64) * DAY_US + order_seconds * 1_000_000
    offers, redeemed_order = _offers(rng, chunk, m, h, member_ids, order_member, ordered_us, start_us, p)
    orders = _orders(
        rng,
        chunk,
        m,
        member_ids,
        order_member,
        order_day,
        order_kind,
        ordered_us,
        end_us,
        redeemed_order,
        offers,
        calendar,
        p,
    )
    events = _events(rng, m, h, member_ids, order_member, ordered_us, start_us, p)
    joined = timestamps(start_us, m.join_day, rng.integers(0, 86_400, n))
    members = pa.table(
        {
            c.MEMBER_ID: member_ids,
            c.JOINED_AT: joined,
            c.TIER: TIER_NAMES.take(pa.array(m.tier)),
            c.TIER_SINCE: joined,  # the simulated tiers never change: each is held since joining
        }
    )
    return {
        "orders": orders,
        "events": events,
        "members": members,
        "offers": offers,
        "subscriptions": _subscriptions(rng, m, h, member_ids, start_us, days),
        "truth": _truth(m, h, member_ids, calendar[0]),
        "suppressions": _suppressions(rng, member_ids, start_us, days),  # drawn last: earlier draws unchanged
    }


SUPPRESSION_SHARE = 0.01
SUPPRESSION_MIX = (0.70, 0.25, 0.05)  # opted_out, complaint, legal_hold (contract.SUPPRESSION_REASONS)


def _suppressions(rng, member_ids, start_us, days) -> pa.Table:
    """About 1% of members must not be contacted: opted out and legal holds for good, complaints for a
    while (until a day up to half a year past the simulated period)."""
    rows = np.flatnonzero(rng.random(len(member_ids)) < SUPPRESSION_SHARE)
    reason = rng.choice(len(SUPPRESSION_MIX), len(rows), p=SUPPRESSION_MIX)
    until_day = rng.integers(0, days + 180, len(rows))
    complaint = reason == 1
    return pa.table(
        {
            c.MEMBER_ID: member_ids.take(pa.array(rows)),
            c.REASON: pa.array(np.asarray(c.SUPPRESSION_REASONS)[reason]),
            c.UNTIL: pa.array(start_us + until_day * DAY_US, pa.timestamp("us"), mask=~complaint),
        }
    )


def _orders(
    rng,
    chunk,
    m,
    member_ids,
    order_member,
    order_day,
    order_kind,
    ordered_us,
    end_us,
    redeemed_order,
    offers,
    calendar,
    p,
) -> pa.Table:
    k = len(order_member)
    u = rng.random(k)
    category = (u[:, None] > m.mix_cdf[order_member]).sum(axis=1).clip(0, len(proc.CATEGORIES) - 1)
    category = np.where(order_kind == 1, m.cycle_category[order_member], category)
    amount = np.round(m.spend_level[order_member] * proc.PRICE_FACTOR[category] * rng.gamma(6.0, 1.0 / 6.0, k), 2)
    refunded_us = ordered_us + rng.integers(1, 16, k) * DAY_US
    # A refund recorded after the observed period is not known yet: the order still reads as paid.
    refunded = (order_kind == 0) & (rng.random(k) < p.refund_share) & (refunded_us < end_us)
    promo = proc.promotion_days(calendar, p)[order_day]
    year = calendar.year.values[order_day]
    coupon = np.where(
        promo & (rng.random(k) < 0.6),
        np.char.add(np.where(calendar.month.values[order_day] == 6, "PLAT-618-", "PLAT-1111-"), year.astype(str)),
        np.where(rng.random(k) < 0.06, np.char.add("STORE-", year.astype(str)), None),
    ).astype(object)
    redeemed = redeemed_order >= 0
    coupon[redeemed_order[redeemed]] = np.asarray(offers[c.OFFER_ID].to_pylist(), dtype=object)[redeemed]
    return pa.table(
        {
            c.ORDER_ID: ids(f"O{chunk:04d}", np.arange(k), 9),
            c.MEMBER_ID: member_ids.take(pa.array(order_member)),
            c.ORDERED_AT: pa.array(ordered_us, pa.timestamp("us")),
            c.AMOUNT: amount,
            c.CATEGORY: CATEGORY_NAMES.take(pa.array(category)),
            c.QUANTITY: 1 + rng.poisson(0.3, k),
            c.COUPON_ID: pa.array(coupon, pa.string()),
            c.STATUS: pa.array(np.where(refunded, c.REFUNDED, c.PAID)),
            c.REFUNDED_AT: pa.array(np.where(refunded, refunded_us, 0), pa.timestamp("us"), mask=~refunded),
        }
    )


def _offers(rng, chunk, m, h, member_ids, order_member, ordered_us, start_us, p):
    """The offers table, and for each offer the row of the order that redeemed it (-1: none)."""
    member = np.concatenate(h.offer_member).astype(np.int64) if h.offer_member else np.empty(0, np.int64)
    day = np.concatenate(h.offer_day) if h.offer_day else np.empty(0, np.int32)
    value = np.concatenate(h.offer_value) if h.offer_value else np.empty(0)
    treated = np.concatenate(h.offer_treated) if h.offer_treated else np.empty(0, bool)
    sent_us = start_us + day.astype(np.int64) * DAY_US + 10 * 3600 * 1_000_000
    redeemed_order = _first_order_in_window(member, day, treated, order_member, ordered_us, start_us, p.coupon_days)
    redeemed_us = np.where(redeemed_order >= 0, ordered_us[np.maximum(redeemed_order, 0)], 0)
    table = pa.table(
        {
            c.OFFER_ID: ids(f"WB{chunk:04d}", np.arange(len(member)), 8),
            c.MEMBER_ID: member_ids.take(pa.array(member)),
            c.SENT_AT: pa.array(sent_us, pa.timestamp("us")),
            c.OFFER_TYPE: pa.array(np.full(len(member), "winback_coupon")),
            c.TREATED: pa.array(treated),
            c.VALUE: pa.array(value, pa.float64()),
            c.REDEEMED_AT: pa.array(redeemed_us, pa.timestamp("us"), mask=redeemed_order < 0),
        }
    )
    return table, redeemed_order


def _first_order_in_window(member, day, treated, order_member, ordered_us, start_us, window_days) -> np.ndarray:
    """Index of each treated offer's first order in the days after sending (the coupon's validity)."""
    result = np.full(len(member), -1)
    if not len(member) or not len(order_member):
        return result
    orders = pd.DataFrame({"member": order_member, "t": ordered_us, "row": np.arange(len(order_member))})
    offers = pd.DataFrame(
        {"member": member, "t": start_us + (day.astype(np.int64) + 1) * DAY_US, "offer": np.arange(len(member))}
    )
    matched = pd.merge_asof(
        offers.sort_values("t"),
        orders.sort_values("t"),
        on="t",
        by="member",
        direction="forward",
        tolerance=window_days * DAY_US - 1,
    )
    matched = matched[matched["row"].notna() & treated[matched["offer"].to_numpy()]]
    # One order redeems at most one coupon (the earliest offer wins).
    matched = matched.drop_duplicates("row")
    result[matched["offer"].to_numpy()] = matched["row"].astype(np.int64).to_numpy()
    return result


def _events(rng, m, h, member_ids, order_member, ordered_us, start_us, p) -> pa.Table:
    browse_member = np.concatenate(h.browse_member).astype(np.int64)
    browse_day = np.concatenate(h.browse_day)
    kb = len(browse_member)
    browse_us = start_us + browse_day.astype(np.int64) * DAY_US + rng.integers(0, 86_400, kb) * 1_000_000
    browse_type = rng.choice(len(BROWSE_TYPES), kb, p=BROWSE_TYPE_SHARES)
    # Every order comes with a view shortly before it, and half with a cart event.
    with_cart = rng.random(len(order_member)) < 0.5
    lead_us = rng.integers(60, 3600, len(order_member)) * 1_000_000
    member = np.concatenate([browse_member, order_member, order_member[with_cart]])
    at_us = np.concatenate([browse_us, ordered_us - lead_us, (ordered_us - lead_us // 2)[with_cart]])
    kind = np.concatenate([browse_type, np.zeros(len(order_member), int), np.full(int(with_cart.sum()), 2)])
    category = (rng.random(len(member))[:, None] > m.mix_cdf[member]).sum(axis=1).clip(0, len(proc.CATEGORIES) - 1)
    if p.shift_kind == "browsing" and p.shift_day >= 0:  # a tracking change: from its day, half the events recorded
        recorded = (at_us < start_us + p.shift_day * DAY_US) | (rng.random(len(at_us)) < proc.SHIFT_BROWSE_FACTOR)
        member, at_us, kind, category = member[recorded], at_us[recorded], kind[recorded], category[recorded]
    order = np.argsort(at_us, kind="stable")
    return pa.table(
        {
            c.MEMBER_ID: member_ids.take(pa.array(member[order])),
            c.EVENT_AT: pa.array(at_us[order], pa.timestamp("us")),
            c.EVENT_TYPE: pa.array(BROWSE_TYPES[kind[order]]),
            c.CATEGORY: CATEGORY_NAMES.take(pa.array(category[order])),
        }
    )


def _subscriptions(rng, m, h, member_ids, start_us, days) -> pa.Table:
    """A quarter of cycle buyers subscribe to their category (周期购) while they are still alive."""
    n = len(m.rate)
    start_day = m.join_day + rng.integers(30, 300, n)
    end_of_life = np.where(h.died_day >= 0, h.died_day, days + 10_000)
    holds = (m.cycle >= 0) & (rng.random(n) < 0.25) & (start_day < np.minimum(end_of_life, days))
    end_day = end_of_life + rng.integers(0, 30, n)
    ended = holds & (end_day < days)
    rows = np.flatnonzero(holds)
    return pa.table(
        {
            c.MEMBER_ID: member_ids.take(pa.array(rows)),
            c.CATEGORY: CATEGORY_NAMES.take(pa.array(m.cycle_category[rows])),
            c.STARTED_AT: timestamps(start_us, start_day[rows], np.full(len(rows), 9 * 3600)),
            c.ENDED_AT: pa.array(
                start_us + end_day[rows].astype(np.int64) * DAY_US, pa.timestamp("us"), mask=~ended[rows]
            ),
        }
    )


def _truth(m: Members, h: History, member_ids: pa.Array, start: pd.Timestamp) -> pa.Table:
    """Each member's latent truth: what the oracle (and only the oracle) may read."""
    n = len(m.rate)
    renew_member = np.concatenate(h.renewal_member).astype(np.int64)
    renew_day = np.concatenate(h.renewal_day)
    order = np.lexsort((renew_day, renew_member))
    renew_member, renew_day = renew_member[order], renew_day[order]
    # The first renewal anchor (the cycle's phase at joining) comes first in each member's list.
    counts = np.bincount(renew_member, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    anchors = np.where(m.cycle >= 0, m.first_renewal, -100_000).astype(np.int32)
    values = np.insert(renew_day, offsets[:-1], anchors)
    offsets = offsets + np.arange(n + 1)
    offer_member = np.concatenate(h.offer_member).astype(np.int64) if h.offer_member else np.empty(0, np.int64)
    offer_day = np.concatenate(h.offer_day) if h.offer_day else np.empty(0, np.int32)
    offer_value = np.concatenate(h.offer_value) if h.offer_value else np.empty(0)
    offer_treated = np.concatenate(h.offer_treated) if h.offer_treated else np.empty(0, bool)
    offer_stage = np.concatenate(h.offer_stage) if h.offer_stage else np.empty(0, np.int8)
    a_order = np.lexsort((offer_day, offer_member))  # every offer, both arms: the stage it was sent in
    a_offsets = np.concatenate([[0], np.cumsum(np.bincount(offer_member[a_order], minlength=n))])
    keep = offer_treated
    o_order = np.lexsort((offer_day[keep], offer_member[keep]))
    o_member = offer_member[keep][o_order]
    o_offsets = np.concatenate([[0], np.cumsum(np.bincount(o_member, minlength=n))])
    o_mult = proc.coupon_multiplier(m.response[o_member], offer_value[keep][o_order])
    return pa.table(
        {
            c.MEMBER_ID: member_ids,
            "sim_start": pa.array(np.full(n, start.value // 1000), pa.timestamp("us")),
            "join_day": m.join_day.astype(np.int32),
            "promo_only": m.promo_only,
            "purchase_rate": m.rate,
            "p_disengage": m.p_disengage,
            "disengaged_day": h.disengaged_day.astype(np.int32),
            "died_day": h.died_day.astype(np.int32),
            "cycle_days": np.where(m.cycle >= 0, proc.CYCLE_DAYS[np.maximum(m.cycle, 0)], 0).astype(np.int32),
            "cycle_category": pa.array(
                np.where(m.cycle >= 0, np.array(proc.CATEGORIES)[np.maximum(m.cycle_category, 0)], None)
            ),
            "renewal_days": pa.ListArray.from_arrays(
                pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32))
            ),
            "spend_level": m.spend_level,
            "response_type": pa.array(np.array(RESPONSE_TYPES)[m.response_type]),
            "coupon_response": m.response,
            "treated_offer_days": pa.ListArray.from_arrays(
                pa.array(o_offsets.astype(np.int32)), pa.array(offer_day[keep][o_order].astype(np.int32))
            ),
            "treated_offer_multipliers": pa.ListArray.from_arrays(
                pa.array(o_offsets.astype(np.int32)), pa.array(o_mult)
            ),
            # Every offer (contacted or held out) and the member's stage when it was sent (1 active,
            # 2 disengaging, 3 dead): disengaged_day keeps only the last disengagement, which a win-back
            # undoes, so a campaign's truth needs the stage of its own day.
            "offer_days": pa.ListArray.from_arrays(
                pa.array(a_offsets.astype(np.int32)), pa.array(offer_day[a_order].astype(np.int32))
            ),
            "offer_stages": pa.ListArray.from_arrays(
                pa.array(a_offsets.astype(np.int32)), pa.array(offer_stage[a_order].astype(np.int8))
            ),
        }
    )
