"""`retain monitor` on a large shop with a year of past exports: time and memory (issue 15: <= 60 s at
1,000,000 members with 12 exports).

Exports the shop once with the current champions (`retain export`, as of the end of the data), then
copies that day's scores and summary into the folders of the 11 months before it, so that the monitor
reads 12 days of scores: windows closed for the older ones (labels computed from the orders for each),
open for the latest. Then times `retain monitor` as its own process.

    python bench/bench_monitor_scale.py [--data data/bench_1m] [--exports 12]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from bench_engine import measure

from retain.dataset import open_dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/bench_1m"))
    parser.add_argument("--exports", type=int, default=12)
    args = parser.parse_args()
    dataset = open_dataset(args.data)
    last = dataset.observed_until - pd.Timedelta(days=1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "exports"
        env = {**os.environ, "RETAIN_SERVING_SNAPSHOT_DIR": str(Path(tmp) / "snapshots")}
        command = [sys.executable, "-m", "retain.cli", "export", "--data", str(args.data), "--out", str(out)]
        done = subprocess.run([*command, "--date", str(last.date())], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            return 1
        for months in range(1, args.exports):
            day = (last - pd.DateOffset(months=months)).date().isoformat()
            (out / day).mkdir()
            for name in ("scores.parquet", "summary.json"):
                shutil.copy(out / str(last.date()) / name, out / day / name)
        monitor = [sys.executable, "-m", "retain.cli", "monitor", "--data", str(args.data), "--exports", str(out)]
        # exit 4 (an alert) is a result here, not a failure: the older days' scores are copies of the latest
        seconds, peak_gib, _ = measure(monitor, env, ok=(0, 4))
        doc = json.loads((out / "monitor.json").read_text())
    realised = sum(row["status"] == "realised" for row in doc["days"])
    print(
        f"retain monitor, {dataset.metadata['rows']['members']:,} members, {args.exports} exports "
        f"({realised} task-days realised, {len(doc['days']) - realised} estimated): {seconds:.1f} s "
        f"(bar 60 s), peak RSS {peak_gib:.2f} GiB"
    )
    return 0 if seconds <= 60 else 1


if __name__ == "__main__":
    sys.exit(main())
