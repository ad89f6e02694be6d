"""Simulator speed and memory: 1,000,000 members over 730 days (limit: 180 s and 6 GiB on 2 cores).

Run: .venv/bin/python bench/bench_simulate.py [--members N] [--out data/bench_1m]
Prints wall time, peak resident memory and the rows written.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from retain.simulate import simulate_shop

LIMIT_SECONDS = 180
LIMIT_GIB = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--out", type=Path, default=Path("data/bench_1m"))
    args = parser.parse_args()
    started = time.perf_counter()
    metadata = simulate_shop(args.out, args.members, args.days, seed=42)
    seconds = time.perf_counter() - started
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows = metadata["rows"]
    print(
        f"simulate {args.members:,} members x {args.days} days: {seconds:.1f} s (limit {LIMIT_SECONDS} s, "
        f"ratio {seconds / LIMIT_SECONDS:.2f}), peak RSS {peak_gib:.2f} GiB (limit {LIMIT_GIB} GiB)"
    )
    print("rows: " + ", ".join(f"{table} {n:,}" for table, n in rows.items()))


if __name__ == "__main__":
    main()
