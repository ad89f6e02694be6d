"""Feature speed against plain DuckDB, side by side in one run, on the 1,000,000-member shop.

  (1) reference: a plain DuckDB query of recency, frequency, monetary and mean gap over the orders
  (2) the project's core family (point-in-time orders + core.sql)
  (3) reference: a plain DuckDB count of events per member and type
  (4) the project's full feature set (features.build)

Limits: (2) within 1.2x of (1); (4) within 3x of (1)+(3) and within 2 GiB peak memory.
Each step runs in its own process (so its peak memory is its own), best of --repeat runs.

Run: .venv/bin/python bench/bench_features.py [--data data/bench_1m] [--as-of 2025-06-01]
(builds data/bench_1m with the simulator first when it is missing).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from retain import connection, features
from retain.config import load_config
from retain.dataset import open_dataset

REFERENCE_RFM = """
SELECT member_id,
       max(ordered_at) AS last_order_at,
       count(DISTINCT ordered_at::DATE) AS frequency,
       sum(amount) AS monetary_total,
       avg(amount) AS monetary_mean,
       date_diff('day', min(ordered_at)::DATE, max(ordered_at)::DATE)
           / nullif(count(DISTINCT ordered_at::DATE) - 1, 0) AS mean_gap_days
FROM {orders}
WHERE ordered_at < TIMESTAMP '{as_of}' AND status = 'paid'
GROUP BY member_id
"""
REFERENCE_EVENTS = """
SELECT member_id, event_type, count(*) AS n
FROM {events}
WHERE event_at < TIMESTAMP '{as_of}'
GROUP BY member_id, event_type
"""


def run_step(step: str, path: Path, as_of: pd.Timestamp) -> dict:
    config = load_config()
    dataset = open_dataset(path)
    started = time.perf_counter()
    if step in ("reference_rfm", "reference_events"):
        sql = REFERENCE_RFM if step == "reference_rfm" else REFERENCE_EVENTS
        con = connection.connect()
        sources = {table: dataset.scan(table) for table in ("orders", "events")}
        rows = len(con.sql(sql.format(**sources, as_of=as_of)).df())
    elif step == "core":
        with connection.dataset_connection(dataset) as (con, _):
            features.prepare(con, as_of)
            core = features.aggregates_query("paid", [features.read_sql("core")])
            rows = len(con.sql(features.bind(core, features.sql_params(as_of))).df())
    else:
        rows = len(features.build(dataset, as_of, config.data))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def measure(step: str, path: Path, as_of: str, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--step", step, "--data", str(path), "--as-of", as_of],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout))
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_gib": max(r["peak_gib"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/bench_1m"))
    parser.add_argument("--as-of", default="2025-06-01")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.data, pd.Timestamp(args.as_of))))
        return
    if not (args.data / "dataset.json").exists():
        from retain.simulate import simulate_shop

        simulate_shop(args.data, members=1_000_000, days=730, seed=42)
    steps = ("reference_rfm", "core", "reference_events", "full")
    r = {step: measure(step, args.data, args.as_of, args.repeat) for step in steps}
    for step, m in r.items():
        print(f"{step:17s} {m['seconds']:6.2f} s  peak {m['peak_gib']:.2f} GiB  ({m['rows']:,} rows)")
    core_ratio = r["core"]["seconds"] / r["reference_rfm"]["seconds"]
    full_ratio = r["full"]["seconds"] / (r["reference_rfm"]["seconds"] + r["reference_events"]["seconds"])
    print(f"core family / plain RFM query:          {core_ratio:.2f}x (limit 1.2x)")
    print(f"full feature set / (RFM + event counts): {full_ratio:.2f}x (limit 3x)")
    print(f"full feature set peak memory:            {r['full']['peak_gib']:.2f} GiB (limit 2 GiB)")


if __name__ == "__main__":
    main()
