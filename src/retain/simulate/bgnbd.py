"""A plain BG/NBD purchase log (orders only), to check estimators against known parameters.

Each customer makes a first purchase in the first `entry_weeks` weeks; then, while alive, buys at a
Poisson rate lambda ~ Gamma(r, alpha) a week and, after every repeat purchase, drops out with
probability p ~ Beta(a, b) (Fader, Hardie & Lee 2005: alive for sure right after the first purchase).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from retain import contract as c
from retain.config import DEFAULT_BUCKETS
from retain.dataset import atomic_folder, write_buckets, write_metadata
from retain.simulate.state import ids

WEEK_US = 7 * 86_400 * 1_000_000


def simulate_bgnbd(
    out: Path,
    members: int,
    weeks: float,
    r: float,
    alpha: float,
    a: float,
    b: float,
    seed: int,
    start: pd.Timestamp | None = None,
    entry_weeks: float = 12.0,
    currency: str = "USD",
    buckets: int = DEFAULT_BUCKETS,
) -> dict:
    """Write a BG/NBD purchase log over `weeks` weeks to the dataset folder `out`; return its metadata."""
    start = pd.Timestamp(start if start is not None else "1997-01-01")
    rng = np.random.default_rng(seed)
    rate = rng.gamma(r, 1.0 / alpha, members)
    dropout = rng.beta(a, b, members)
    spend = rng.gamma(6.0, 1.0, members) * 5.0
    t = rng.uniform(0, entry_weeks, members)
    member_rows, times = [np.arange(members)], [t.copy()]  # t moves on with each purchase
    alive = np.arange(members)
    while len(alive):
        t_next = t[alive] + rng.exponential(1.0, len(alive)) / rate[alive]
        keep = t_next < weeks
        alive, t_next = alive[keep], t_next[keep]
        t[alive] = t_next
        member_rows.append(alive)
        times.append(t_next)
        alive = alive[rng.random(len(alive)) >= dropout[alive]]  # may drop out right after a repeat purchase
    member = np.concatenate(member_rows)
    at_us = pd.Timestamp(start).value // 1000 + (np.concatenate(times) * WEEK_US).astype(np.int64)
    order = np.lexsort((at_us, member))
    member, at_us = member[order], at_us[order]
    width = max(6, len(str(members)))
    orders = pa.table(
        {
            c.ORDER_ID: ids("B", np.arange(len(member)), 9),
            c.MEMBER_ID: ids("C", member, width),
            c.ORDERED_AT: pa.array(at_us, pa.timestamp("us")),
            c.AMOUNT: np.round(spend[member] * rng.gamma(6.0, 1.0 / 6.0, len(member)), 2),
            c.CATEGORY: pa.array(np.full(len(member), "unknown")),
            c.STATUS: pa.array(np.full(len(member), c.PAID)),
        }
    )
    truth = pa.table(
        {c.MEMBER_ID: ids("C", np.arange(members), width), "purchase_rate_weekly": rate, "dropout_probability": dropout}
    )
    observed_until = pd.Timestamp(start) + pd.Timedelta(weeks=weeks)
    with atomic_folder(Path(out)) as folder:
        write_buckets(folder, "orders", orders, buckets)
        pq.write_table(truth, folder / "truth.parquet")
        extra = {
            "source": "simulate",
            "simulator": {
                "process": "bgnbd",
                "members": members,
                "weeks": weeks,
                "params": {"r": r, "alpha": alpha, "a": a, "b": b},
                "seed": seed,
            },
            "buckets": buckets,
        }
        return write_metadata(folder, observed_until.normalize(), currency, extra=extra)
