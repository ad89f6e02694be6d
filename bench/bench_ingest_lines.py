"""A real line-item log through `retain ingest`, against a plain pandas reference (issue 16).

Runs `retain ingest` on a line-item file with its mapping (time and peak memory of that process), checks
that the report accounts for every row read, then recomputes orders and revenue per customer from the raw
file with pandas alone — no code of retain's — and compares:

- reference orders per customer: distinct invoices of the customer's sale lines (not cancellations, not
  excluded codes);
- reference revenue per customer: quantity x price of those lines minus the value of the customer's
  cancellation lines (all of them: the reference matches nothing), against retain's paid orders' amounts.

Written for UCI "Online Retail II" (a UK gift retailer, CC BY 4.0; not shipped with retain):

    python bench/bench_ingest_lines.py --orders online_retail_II.csv.gz --mapping examples/online_retail_ii.toml
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pandas as pd

from retain.dataset import open_dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=Path, required=True, help="The line-item file (CSV, or CSV.gz).")
    parser.add_argument("--mapping", type=Path, default=Path("examples/online_retail_ii.toml"))
    parser.add_argument("--currency", default="GBP")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data"
        command = [str(Path(sys.executable).with_name("retain")), "ingest", "--orders", str(args.orders), "--mapping"]
        command += [str(args.mapping), "--currency", args.currency, "--out", str(out)]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds = time.perf_counter() - started
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        report = json.loads((out / "ingest_report.json").read_text())["tables"]["orders"]
        orders = open_dataset(out).read("orders")
    parts = ("rows_kept", "guest", "excluded", "cancellations_matched", "cancellations_unmatched", "rows_quarantined")
    print(f"retain ingest: {seconds:.1f} s, peak {peak_gib:.2f} GiB; {report['orders_written']:,} orders written")
    for part in parts:
        print(f"  {part:<25} {report[part]:>10,}")
    accounted = sum(report[p] for p in parts)
    print(f"  {'sum':<25} {accounted:>10,} of {report['rows_read']:,} rows read: {accounted == report['rows_read']}")
    print(f"  guest share of revenue: {report['guest_revenue_share']:.1%}")

    mapping = tomllib.loads(args.mapping.read_text(encoding="utf-8"))["orders"]
    reference = reference_per_customer(args.orders, mapping)
    paid = orders[orders["status"] == "paid"]
    ours = pd.DataFrame(
        {"orders": orders.groupby("member_id").size(), "revenue": paid.groupby("member_id")["amount"].sum()}
    ).fillna(0.0)
    both = reference.add_suffix("_reference").join(ours, how="outer").fillna(0.0)
    print(f"customers: reference {len(reference):,}, retain {len(ours):,}")
    for name in ("orders", "revenue"):
        ref, got = both[f"{name}_reference"], both[name]
        gap = (got.sum() - ref.sum()) / ref.sum()
        per = ((got - ref).abs() / ref.abs().clip(lower=1e-9)).where(ref != 0, (got != 0).astype(float))
        print(
            f"{name} per customer: total {got.sum():,.2f} against {ref.sum():,.2f} ({gap:+.3%}); "
            f"mean {got.mean():,.3f} against {ref.mean():,.3f}; customers off by more than 0.5%: "
            f"{(per > 0.005).mean():.2%}"
        )
    return 0


def reference_per_customer(path: Path, mapping: dict) -> pd.DataFrame:
    """Orders and net revenue per customer from the raw file with pandas alone."""
    columns = mapping["columns"]
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    customer, invoice = raw[columns["member_id"]], raw[columns["order_id"]]
    quantity = pd.to_numeric(raw[columns["quantity"]])
    value = quantity * pd.to_numeric(raw[columns["unit_price"]])
    excluded = pd.Series(False, index=raw.index)
    for column, patterns in mapping.get("exclude", {}).items():
        values = raw[columns[column]]
        for pattern in patterns:
            excluded |= values.map(lambda v, p=pattern: fnmatch.fnmatchcase(v, p))
    member = (customer != "") & ~excluded
    cancel = invoice.str.startswith("C") | (quantity < 0)
    sales = raw[member & ~cancel].assign(value=value)
    cancels = raw[member & cancel].assign(value=value.abs())
    key = columns["member_id"]
    return pd.DataFrame(
        {
            "orders": sales.groupby(key)[columns["order_id"]].nunique(),
            "revenue": sales.groupby(key)["value"].sum().sub(cancels.groupby(key)["value"].sum(), fill_value=0.0),
        }
    ).fillna(0.0)


if __name__ == "__main__":
    sys.exit(main())
