"""`make train` on the demo dataset, timed end to end (limit: 240 s on 2 cores with model selection, issue 11).

Runs the training job in a fresh process against a throwaway MLflow store (so the figure includes
creating it), then prints the wall time, the ratio to the limit and the held-out table.

Run: .venv/bin/python bench/bench_train.py [--data data/demo]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_SECONDS = 240


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    args = parser.parse_args()
    if not (args.data / "dataset.json").exists():
        sys.exit(f"{args.data} has no dataset; run `make simulate` first.")
    with tempfile.TemporaryDirectory(prefix="retain-bench-train-") as tmp:
        env = {
            **os.environ,
            "RETAIN_MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "RETAIN_MLFLOW_ARTIFACT_LOCATION": f"{tmp}/artifacts",
            "RETAIN_SERVING_SNAPSHOT_DIR": f"{tmp}/snapshots",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "GIT_PYTHON_REFRESH": "quiet",
        }
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "training", "--data", str(args.data)], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
    print(done.stdout)
    if done.returncode != 0:
        sys.exit(f"the training job failed:\n{done.stderr}")
    print(f"make train on {args.data}: {seconds:.1f} s (limit {LIMIT_SECONDS} s, ratio {seconds / LIMIT_SECONDS:.2f})")


if __name__ == "__main__":
    main()
