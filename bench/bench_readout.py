"""Is the campaign readout true? Each past win-back campaign's estimated incremental margin (`retain
readout`: contacted minus held-out members, with its 95% interval) against the simulator's truth for the
same contacted members.

The truth of a campaign sent on day s: for each contacted member, the simulator's chain (the oracle),
started from the stage the member was in when the coupon was sent (recorded per offer in truth.parquet),
gives the expected paid orders in the window with the coupon the member got and without it (the
campaign's own coupon taken out of the member's history); their difference x the member's mean paid
order amount x `decisions.margin_rate`, summed over the contacted members. The interval should cover it
for about 95% of campaigns (the issue's bar: at least 90%).

Needs a simulated dataset with its truth.parquet (`make simulate`, or the demo's data/demo).

    python bench/bench_readout.py [--data data/demo] [--days 14,90]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from retain import readout
from retain.config import load_config
from retain.dataset import open_dataset
from retain.simulate.oracle import offer_stage, oracle_probabilities

BAR = 0.90


def true_incremental_margin(
    truth: pd.DataFrame,
    contacted: pd.DataFrame,
    sent_day: pd.Timestamp,
    days: int,
    amount: pd.Series,
    margin_rate: float,
) -> float:
    """The true incremental margin of one campaign's contacted members (member_id, value) over `days`."""
    start = pd.Timestamp(truth["sim_start"].iloc[0])
    s = (sent_day - start).days
    own = truth.set_index("member_id").loc[contacted["member_id"]].reset_index()
    stages = offer_stage(own, sent_day)
    not_this = [np.asarray(d) != s for d in own["treated_offer_days"]]  # without the campaign's own coupon
    own["treated_offer_days"] = [np.asarray(d)[k] for d, k in zip(own["treated_offer_days"], not_this, strict=True)]
    own["treated_offer_multipliers"] = [
        np.asarray(m)[k] for m, k in zip(own["treated_offer_multipliers"], not_this, strict=True)
    ]
    as_of = sent_day + pd.Timedelta(days=1)  # the simulator's coupons are valid from the day after sending
    without = oracle_probabilities(own, as_of, days, stages=stages)["expected_orders"]
    gain = pd.Series(0.0, index=without.index)
    values = contacted.set_index("member_id")["value"]
    for value in values.unique():
        subset = own[own["member_id"].isin(values.index[values == value])]
        with_coupon = oracle_probabilities(subset, as_of, days, coupon_value=float(value), stages=stages)
        gain.loc[with_coupon.index] = with_coupon["expected_orders"] - without.loc[with_coupon.index]
    return float((gain * amount.reindex(gain.index).fillna(0.0) * margin_rate).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--days", default="14,90", help="windows after sending, comma-separated")
    args = parser.parse_args()
    config = load_config()
    dataset = open_dataset(args.data)
    truth = pd.read_parquet(dataset.path / "truth.parquet")
    if "offer_stages" not in truth.columns:
        raise SystemExit(f"{args.data} was simulated before offers recorded their stage; run `make simulate` again.")
    orders = dataset.read("orders", ["member_id", "amount", "status"])
    amount = orders[orders["status"] != "refunded"].groupby("member_id")["amount"].mean()
    offers = dataset.read("offers", ["offer_id", "member_id", "sent_at", "treated", "value"])
    offers["sent_day"] = offers["sent_at"].dt.normalize()
    worst = 1.0
    for days in (int(text) for text in args.days.split(",")):
        outcomes = readout.offer_outcomes(dataset, days)
        campaigns = readout.readout(outcomes, config, days)
        rows = []
        for entry in campaigns:
            if entry["incremental_margin"] is None:
                continue
            day = pd.Timestamp(entry["sent_day"])
            contacted = offers[(offers["sent_day"] == day) & offers["treated"]][["member_id", "value"]]
            true = true_incremental_margin(truth, contacted, day, days, amount, config.decisions.margin_rate)
            covered = entry["ci_low"] <= true <= entry["ci_high"]
            rows.append(
                {
                    "sent": entry["sent_day"],
                    "contacted": entry["contacted"],
                    "control": entry["control"],
                    "estimate": round(entry["incremental_margin"]),
                    "ci_low": round(entry["ci_low"]),
                    "ci_high": round(entry["ci_high"]),
                    "truth": round(true),
                    "covered": covered,
                }
            )
        table = pd.DataFrame(rows)
        share = table["covered"].mean() if len(table) else float("nan")
        worst = min(worst, share)
        print(f"\nwindow {days} days: {len(table)} campaigns with a control group ({config.data.currency})")
        print(table.to_string(index=False))
        error = (table["estimate"] - table["truth"]).abs().median()
        print(
            f"interval covers the truth for {table['covered'].sum()} of {len(table)} campaigns ({share:.0%}; "
            f"bar {BAR:.0%}); median |estimate - truth| {error:,.0f}; total estimate "
            f"{table['estimate'].sum():,.0f} against truth {table['truth'].sum():,.0f}"
        )
    return 0 if worst >= BAR else 1


if __name__ == "__main__":
    raise SystemExit(main())
