"""Does `retain monitor` tell a stale model from a good one? (issue 15)

For a simulated shop, as a team would run it:

1. train the champions on the shop's data up to `--train-until` (a copy of the dataset cut at that day:
   no row, refund, redemption or subscription end after it), into a store of their own;
2. export a list every `--every` days from that day to the end of the data with those champions (the
   features of each day are point-in-time, from the whole dataset);
3. run `retain monitor --as-of D` after each export D, as a daily cron job would, and record whether an
   alert fired and which inputs moved most.

It prints, per monitored day, the alerts; over all of them, the realised ECE and the gap between the
confidence-based ROC-AUC estimate (made while the window was open) and the realised ROC-AUC (once it
closed). On a stationary shop no alert should fire; on a shop with a regime change (`retain simulate
--shift DATE:KIND`), the first alert after DATE and the inputs it names.

    python bench/bench_monitor.py --data data/demo --train-until 2025-01-01 --every 30
    python bench/bench_monitor.py --data data/shifted --train-until 2025-09-01 --every 7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from retain import contract as c
from retain.config import DEFAULT_BUCKETS
from retain.dataset import open_dataset, write_dataset

# Columns that record a later event of a row: after the cut it has not happened yet.
LATER = {"orders": c.REFUNDED_AT, "offers": c.REDEEMED_AT, "subscriptions": c.ENDED_AT}


def cut(data: Path, until: pd.Timestamp, out: Path) -> None:
    """The dataset as it was on `until`: rows from before it, and what happened to them after it undone."""
    dataset = open_dataset(data)
    tables = {}
    for table in c.TABLES:
        if not dataset.has(table):
            continue
        frame = dataset.read(table)
        time_column = c.TIME_COLUMN.get(table) or (c.JOINED_AT if table == "members" else None)
        if time_column in frame:
            frame = frame[frame[time_column].isna() | (frame[time_column] < until)]
        later = LATER.get(table)
        if later in frame:
            after = frame[later] >= until
            frame.loc[after, later] = pd.NaT
            if table == "orders":
                frame.loc[after, c.STATUS] = c.PAID
        tables[table] = frame.reset_index(drop=True)
    buckets = dataset.buckets or DEFAULT_BUCKETS
    write_dataset(out, tables, until, dataset.metadata.get("currency", "CNY"), buckets=buckets)


def retain(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "retain.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--train-until", required=True, help="train the champions on the data before this day")
    parser.add_argument("--every", type=int, default=30, help="days between exports")
    parser.add_argument("--work", type=Path, help="keep the store, exports and reports here (default: temporary)")
    args = parser.parse_args()
    dataset = open_dataset(args.data)
    until = pd.Timestamp(args.train_until)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "RETAIN_MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlruns/mlflow.db",
            "RETAIN_MLFLOW_ARTIFACT_LOCATION": str(work / "mlruns" / "artifacts"),
            "RETAIN_SERVING_SNAPSHOT_DIR": str(work / "snapshots"),
        }
        started = time.perf_counter()
        cut(args.data, until, work / "train_data")
        trained = retain("train", "--data", str(work / "train_data"), env=env)
        if trained.returncode != 0:
            print(trained.stdout[-3000:], trained.stderr[-3000:])
            return 1
        print(f"trained on the data before {until.date()} in {time.perf_counter() - started:.0f} s")

        days = pd.date_range(until, dataset.observed_until - pd.Timedelta(days=1), freq=f"{args.every}D")
        exports, results = work / "exports", []
        for day in days:
            exported = retain(
                "export", "--data", str(args.data), "--out", str(exports), "--date", str(day.date()), env=env
            )
            if exported.returncode != 0:
                print(exported.stderr[-2000:])
                return 1
            monitored = retain(
                "monitor", "--data", str(args.data), "--exports", str(exports), "--as-of", str(day.date()), env=env
            )
            doc = json.loads((exports / "monitor.json").read_text())
            top = {r["task"]: [row["label"] for row in r["psi"] if row["top"]][:3] for r in doc["drift"]}
            results.append({"day": day.date(), "exit": monitored.returncode, "alerts": doc["alerts"], "top": top})
            alerts = " | ".join(doc["alerts"]) or "none"
            feeds = ", ".join(f"{row['table']} {row['ratio']:.2f}x" for row in doc.get("volume", []))
            print(f"{day.date()}: exit {monitored.returncode}; rows a day {feeds}; alerts: {alerts}", flush=True)

        final = retain("monitor", "--data", str(args.data), "--exports", str(exports), env=env)
        doc = json.loads((exports / "monitor.json").read_text())
        realised = [row for row in doc["days"] if row["status"] == "realised"]
        fired = [r for r in results if r["exit"] == 4]
        print(f"\nmonitored days: {len(results)}; days with an alert: {len(fired)}")
        if fired:
            print(f"first alert: {fired[0]['day']}: {fired[0]['alerts'][0]}")
        print(f"at the end of the data (exit {final.returncode}), realised windows: {len(realised)}")
        for row in realised:
            print(
                f"  {row['day']} {row['task']:<10} ROC-AUC {row['roc_auc']:.4f} (estimated while open "
                f"{row['expected_roc_auc']:.4f}, gap {row['expected_roc_auc'] - row['roc_auc']:+.4f}), "
                f"ECE {row['ece']:.4f}, mean predicted {row['mean_predicted']:.3f} against {row['observed_rate']:.3f}"
            )
        if realised:
            worst_ece = max(row["ece"] for row in realised)
            worst_gap = max(abs(row["expected_roc_auc"] - row["roc_auc"]) for row in realised)
            print(f"largest realised ECE {worst_ece:.4f}; largest |estimate - realised| ROC-AUC {worst_gap:.4f}")
        for report in doc["drift"]:
            named = ", ".join(f"{row['label']} {row['psi']:.2f}" for row in report["psi"][:5])
            print(f"drift of the {report['task']} model at the end: {named}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
