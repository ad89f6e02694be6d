"""Did the campaign work? For every past campaign whose response window has closed: the members contacted
against the members held out, what each group bought in the window, and what the coupons earned net of
what they cost.

A campaign is one offer type sent on one day (the shop's own campaigns in the offers table, and the
exported lists once the CRM's send log is ingested back as offers: the export's `offer_id` and control
group are made for this). Within the response window (`winback.response_days` after sending, or the
days asked: a win-back coupon's worth is mostly the orders of the months after it, not of its 14 days):

    margin per member   = paid order amounts x `decisions.margin_rate`, averaged over the group
    incremental margin  = (margin per contacted member - margin per held-out member) x members contacted
    discount cost       = the value of the coupons redeemed in the window; send cost = members contacted x send_cost
    net profit          = incremental margin - discount cost - send cost;  ROI = net profit / (discount + send cost)

The interval of the incremental margin is the normal one of a difference in means with unequal variances
(Welch), 95%: the two groups are independent random draws, so it is what the data says and no more. A
campaign without a held-out group has no estimate (a difference needs two groups), and says so; nor has
one with fewer than MIN_GROUP members in either group: margins are mostly zeros with a few large orders,
and on a dozen members the normal interval is far too narrow (on the demo shop's first two campaigns,
12 and 14 held out, it missed the simulator's truth both times; bench/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from retain import contract as c
from retain.config import Config
from retain.connection import dataset_connection
from retain.dataset import Dataset

Z_95 = 1.959963984540054
NO_CONTROL = "no control group, no estimate"
NO_CONTACTED = "no member contacted, no estimate"
MIN_GROUP = 30
TOO_FEW = f"fewer than {MIN_GROUP} members in a group, no estimate"


def offer_outcomes(
    dataset: Dataset, days: int, since: pd.Timestamp | None = None, until: pd.Timestamp | None = None
) -> pd.DataFrame:
    """One row per offer sent on or after `since` whose window of `days` closed by `until` (default: the
    end of the data; an export of an earlier day reads out only what was known on that day): offer_id,
    member_id, offer_type, sent_day, treated, orders and amount (paid orders in the window), discount (the
    coupon's value when redeemed in the window, else 0)."""
    columns = [c.OFFER_ID, c.MEMBER_ID, c.OFFER_TYPE, "sent_day", c.TREATED, "orders", "amount", "discount"]
    if not dataset.has("offers"):
        return pd.DataFrame(columns=columns)
    days = int(days)
    since = pd.Timestamp(since) if since is not None else pd.Timestamp("1900-01-01")
    until = pd.Timestamp(until) if until is not None else dataset.observed_until
    with dataset_connection(dataset) as (con, _):  # the view has every contract column: NULL where absent
        return con.execute(
            f"""
            WITH sent AS (
                SELECT *, sent_at + INTERVAL {days} DAY AS window_end
                FROM offers
                WHERE sent_at >= ? AND sent_at + INTERVAL {days} DAY <= ?
            )
            SELECT s.offer_id, s.member_id, s.offer_type, date_trunc('day', s.sent_at) AS sent_day, s.treated,
                   count(o.member_id) AS orders, coalesce(sum(o.amount), 0) AS amount,
                   CASE WHEN s.treated AND s.redeemed_at < s.window_end THEN coalesce(s.value, 0) ELSE 0 END
                       AS discount
            FROM sent s
            LEFT JOIN orders o
              ON o.member_id = s.member_id AND o.ordered_at >= s.sent_at AND o.ordered_at < s.window_end
             AND coalesce(o.status, 'paid') = 'paid'
            GROUP BY ALL
            ORDER BY sent_day, s.offer_type, s.offer_id
            """,
            [since.to_pydatetime(), until.to_pydatetime()],
        ).df()[columns]


def readout(outcomes: pd.DataFrame, config: Config, days: int, predicted: pd.Series | None = None) -> list[dict]:
    """One entry per campaign (offer type x send day), oldest first, from `offer_outcomes` over `days`.
    `predicted`: the expected value the export gave each offer, by offer_id (None: not known, as for a
    shop's own past campaigns)."""
    margin_rate = config.decisions.margin_rate
    send_cost = {c.OFFER_TYPES[0]: config.winback.send_cost, c.OFFER_TYPES[1]: config.subscription.send_cost}
    campaigns = []
    for (offer_type, day), group in outcomes.groupby([c.OFFER_TYPE, "sent_day"], sort=True):
        treated = group[c.TREATED].to_numpy(dtype=bool)
        margin = group["amount"].to_numpy(dtype=float) * margin_rate
        orders = group["orders"].to_numpy(dtype=float)
        entry = {
            "offer_type": offer_type,
            "sent_day": pd.Timestamp(day).date().isoformat(),
            "window_days": int(days),
            "contacted": int(treated.sum()),
            "control": int((~treated).sum()),
            "orders_per_contacted": _mean(orders[treated]),
            "orders_per_control": _mean(orders[~treated]),
            "margin_per_contacted": _mean(margin[treated]),
            "margin_per_control": _mean(margin[~treated]),
            "discount_cost": float(group["discount"].to_numpy(dtype=float)[treated].sum()),
            "send_cost": float(treated.sum() * send_cost.get(offer_type, 0.0)),
            "predicted_value": None,
        }
        if predicted is not None:
            known = predicted.reindex(group.loc[treated, c.OFFER_ID]).dropna()
            entry["predicted_value"] = float(known.sum()) if len(known) else None
        entry.update(_estimate(margin[treated], margin[~treated], entry["discount_cost"] + entry["send_cost"]))
        campaigns.append(entry)
    campaigns.sort(key=lambda entry: (entry["sent_day"], entry["offer_type"]))
    return campaigns


def _estimate(contacted: np.ndarray, control: np.ndarray, cost: float) -> dict:
    """The incremental margin of the contacted group with its 95% interval, net profit and ROI."""
    empty = {"incremental_margin": None, "ci_low": None, "ci_high": None, "net_profit": None, "roi": None}
    if len(control) == 0:
        return {**empty, "note": NO_CONTROL}
    if len(contacted) == 0:
        return {**empty, "note": NO_CONTACTED}
    if min(len(contacted), len(control)) < MIN_GROUP:
        return {**empty, "note": TOO_FEW}
    n = len(contacted)
    per_member = contacted.mean() - control.mean()
    variance = contacted.var(ddof=1) / n if n > 1 else 0.0
    variance += control.var(ddof=1) / len(control) if len(control) > 1 else 0.0
    half = Z_95 * np.sqrt(variance) * n
    total = per_member * n
    net = total - cost
    return {
        "incremental_margin": float(total),
        "ci_low": float(total - half),
        "ci_high": float(total + half),
        "net_profit": float(net),
        "roi": float(net / cost) if cost > 0 else None,
        "note": "",
    }


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def predicted_values(exports: Path) -> pd.Series:
    """The expected value of every offer in the exports under `exports` (each day's at_risk.parquet), by
    offer_id: what the product predicted for the members the CRM then contacted."""
    parts = [
        pd.read_parquet(path, columns=[c.OFFER_ID, "expected_value"])
        for path in sorted(Path(exports).glob("*/at_risk.parquet"))
    ]
    if not parts:
        return pd.Series(dtype=float)
    frame = pd.concat(parts).drop_duplicates(c.OFFER_ID, keep="last")
    return frame.set_index(c.OFFER_ID)["expected_value"]


def table(campaigns: list[dict], currency: str):
    """The readout as a rich table: one row per campaign."""
    from rich.table import Table

    window = campaigns[0]["window_days"] if campaigns else "—"
    out = Table(
        "sent",
        "offer",
        "contacted",
        "control",
        "orders / member (contacted · control)",
        f"incremental margin, {currency} (95% interval)",
        "discount + send cost",
        "net profit",
        "ROI",
        "predicted value",
        title=f"campaign readout ({currency}; orders in the {window} days after sending)",
    )
    for entry in campaigns:
        orders = f"{_shown(entry['orders_per_contacted'], 3)} · {_shown(entry['orders_per_control'], 3)}"
        if entry["incremental_margin"] is None:
            margin = entry["note"]
        else:
            margin = f"{entry['incremental_margin']:,.0f} ({entry['ci_low']:,.0f} to {entry['ci_high']:,.0f})"
        out.add_row(
            entry["sent_day"],
            entry["offer_type"],
            f"{entry['contacted']:,}",
            f"{entry['control']:,}",
            orders,
            margin,
            f"{entry['discount_cost'] + entry['send_cost']:,.0f}",
            _shown(entry["net_profit"], 0, grouped=True),
            _shown(entry["roi"], 2),
            _shown(entry["predicted_value"], 0, grouped=True),
        )
    return out


def _shown(value: float | None, decimals: int, grouped: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:,.{decimals}f}" if grouped else f"{value:.{decimals}f}"
