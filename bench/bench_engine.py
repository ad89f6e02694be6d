"""The local engine against a 2-worker Dask LocalCluster: features and the daily export at 250,000,
500,000 and 1,000,000 members, on this machine (2 cores).

Each run is `retain features` or `retain export` in its own process (`RETAIN_ENGINE_KIND=local|dask`),
timed from start to exit (the Dask runs include starting the cluster, unless `--standing`) with the peak memory of the
whole process tree (driver plus Dask workers, polled every 0.2 s) and of its largest child process (a
Dask worker). The shops are simulated once into data/bench_<n> (1,000,000 is data/bench_1m, shared with
the other benchmarks) in member buckets of a fixed size (one bucket per 15,625 members: 16 at 250,000,
64 at 1,000,000; a shop written before buckets is rebucketed), and Dask runs one task per
`--buckets-per-task` buckets (4: 62,500 members), so a worker's task is the same size at every scale.
The export uses the demo's champions (`make demo` first). The Dask export's files are checked to be
the local one's.

Run: .venv/bin/python bench/bench_engine.py [--sizes 250000,500000,1000000] [--buckets-per-task 4] [--standing]
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

import psutil

from retain.dataset import open_dataset, rebucket
from retain.simulate import simulate_shop

AS_OF = "2025-12-31"


MEMBERS_PER_BUCKET = 15_625


def dataset_for(members: int) -> Path:
    """The shop of this size in buckets of MEMBERS_PER_BUCKET members (simulated or rebucketed once)."""
    path = Path("data/bench_1m" if members == 1_000_000 else f"data/bench_{members // 1000}k")
    buckets = max(1, members // MEMBERS_PER_BUCKET)
    if not (path / "dataset.json").exists():
        print(f"simulating {members:,} members into {path} ({buckets} buckets, once)", flush=True)
        simulate_shop(path, members, 730, seed=42, buckets=buckets)
    elif open_dataset(path).buckets != buckets:
        print(f"rewriting {path} into {buckets} member buckets (once)", flush=True)
        rebucket(open_dataset(path), buckets)
    return path


def measure(command: list[str], env: dict, ok: tuple[int, ...] = (0,)) -> tuple[float, float, float]:
    """Wall seconds, the peak RSS (GiB) of the process and all its children, and the peak of its largest
    child (a Dask worker; 0 without children). An exit code not in `ok` stops the bench."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent, peak, child_peak = psutil.Process(process.pid), 0, 0
    while process.poll() is None:
        try:
            children = parent.children(recursive=True)
            sizes = [p.memory_info().rss for p in children if p.is_running()]
            peak = max(peak, parent.memory_info().rss + sum(sizes))
            child_peak = max(child_peak, *sizes, 0)
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if process.returncode not in ok:
        raise SystemExit(f"{' '.join(command)} failed: {process.stderr.read()[-2000:]}")
    return seconds, peak / 2**30, child_peak / 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250000,500000,1000000")
    parser.add_argument(
        "--buckets-per-task", type=int, default=4, help="member buckets a Dask task reads (4: 62,500 members)"
    )
    parser.add_argument(
        "--standing",
        action="store_true",
        help="run Dask against a 2-worker LocalCluster this script starts first (engine.scheduler_address), "
        "as a deployment's running cluster: the runs no longer pay its start and stop; memory then counts "
        "the driver only",
    )
    args = parser.parse_args()
    cluster = standing_cluster() if args.standing else None
    try:
        if cluster is not None:
            print(
                f"Dask runs use the running cluster at {cluster.scheduler_address}; their memory is the driver's only"
            )
        return compare(args)
    finally:
        if cluster is not None:
            cluster.close()


def standing_cluster():
    """A 2-worker LocalCluster on 127.0.0.1 (one thread a worker, as the engine's own), named to the runs by
    RETAIN_ENGINE_SCHEDULER_ADDRESS."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    )
    os.environ["RETAIN_ENGINE_SCHEDULER_ADDRESS"] = cluster.scheduler_address
    return cluster


def compare(args: argparse.Namespace) -> int:
    """Features and export, local then Dask, at each size; prints the rows and the ratios."""
    retain = [sys.executable, "-m", "retain.cli"]
    rows = []
    for members in (int(text) for text in args.sizes.split(",")):
        data = dataset_for(members)
        with tempfile.TemporaryDirectory() as tmp:
            out = {}
            buckets = open_dataset(data).buckets
            for kind in ("local", "dask"):
                env = {
                    **os.environ,
                    "RETAIN_ENGINE_KIND": kind,
                    # tasks of a fixed number of buckets: the same size at every scale
                    "RETAIN_ENGINE_PARTITIONS": str(max(1, buckets // args.buckets_per_task)),
                    "RETAIN_SERVING_SNAPSHOT_DIR": f"{tmp}/snap-{kind}",
                }
                features = [
                    *retain,
                    "features",
                    "--data",
                    str(data),
                    "--as-of",
                    AS_OF,
                    "--out",
                    f"{tmp}/f-{kind}.parquet",
                ]
                f_seconds, f_gib, f_worker = measure(features, env)
                out[kind] = f"{tmp}/out-{kind}"
                exporting = [*retain, "export", "--data", str(data), "--date", AS_OF, "--out", out[kind]]
                e_seconds, e_gib, e_worker = measure(exporting, env)
                rows.append((members, kind, f_seconds, f_gib, f_worker, e_seconds, e_gib, e_worker))
                print(
                    f"{members:>9,} {kind:>5}: features {f_seconds:6.1f} s {f_gib:5.2f} GiB (largest worker "
                    f"{f_worker:4.2f}) | export {e_seconds:6.1f} s {e_gib:5.2f} GiB (largest worker {e_worker:4.2f})",
                    flush=True,
                )
            same = [json.loads(Path(out[k], AS_OF, "MANIFEST.json").read_text())["at_risk.parquet"] for k in out]
            print(f"{members:>9,} the Dask list is the local one: {same[0] == same[1]}", flush=True)
            local, dask = rows[-2], rows[-1]
            print(
                f"{members:>9,} dask / local: features {dask[2] / local[2]:.2f}x time, "
                f"{dask[3] / local[3]:.2f}x memory; export {dask[5] / local[5]:.2f}x time, "
                f"{dask[6] / local[6]:.2f}x memory",
                flush=True,
            )
    print("\nmembers | engine | features s | features GiB | largest worker | export s | export GiB | largest worker")
    for members, kind, fs, fg, fw, es, eg, ew in rows:
        print(f"{members:,} | {kind} | {fs:.1f} | {fg:.2f} | {fw:.2f} | {es:.1f} | {eg:.2f} | {ew:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
