"""The daily export at scale: 1,000,000 members scored, decided and written (limit: 90 s and 6 GiB on
2 cores), features included, reasons only for the members on the list.

Runs `retain export` as its own process on the simulated million-member shop (simulated first if
`data/bench_1m` is missing, as bench_simulate.py does) with the demo's champion models (`make demo`
first), into a throwaway folder and snapshot folder, and prints wall time and the process's peak RSS.

Run: .venv/bin/python bench/bench_export.py [--data data/bench_1m] [--members 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retain.simulate import simulate_shop

LIMIT_SECONDS = 90
LIMIT_GIB = 6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/bench_1m"))
    parser.add_argument("--members", type=int, default=1_000_000)
    args = parser.parse_args()
    if not (args.data / "dataset.json").exists():
        print(f"simulating {args.members:,} members into {args.data} (once)")
        simulate_shop(args.data, args.members, 730, seed=42)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RETAIN_SERVING_SNAPSHOT_DIR": str(Path(tmp) / "snapshots")}
        command = [sys.executable, "-m", "retain.cli", "export", "--data", str(args.data), "--out", tmp]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n")
            return done.returncode
        (folder,) = [p for p in Path(tmp).iterdir() if p.is_dir() and p.name[0].isdigit()]
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    print(
        f"export {summary['members_scored']:,} members as of {summary['as_of']}: {seconds:.1f} s "
        f"(limit {LIMIT_SECONDS} s, ratio {seconds / LIMIT_SECONDS:.2f}), peak RSS {peak_gib:.2f} GiB "
        f"(limit {LIMIT_GIB} GiB)"
    )
    print(
        f"list {summary['counts_by_status'].get('contact', 0):,} members, controls {summary['controls']:,}, "
        f"budget used {summary['budget_used']:,.2f}; files: "
        + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sizes.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
