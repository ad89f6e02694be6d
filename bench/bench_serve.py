"""Serving speed against a bare BentoML endpoint on the same server, in one run (`make bench-serve`).

Starts `retain serve` (127.0.0.1, a free port) on the trained demo champion, loads it from this process,
prints the figures and stops the server by its process id. For GC freeze off and on:
  - sequential single-member POST /score against GET-free POST /ping (a constant): p50 and p99 in ms;
  - 16 concurrent clients for --seconds with 2 workers: requests/s, p99, errors, each worker's CPU
    share and resident memory.
In-process Scorer timings (1 member, 1,000 members, with and without on-the-fly reasons) come first.

Run: .venv/bin/python bench/bench_serve.py [--seconds 30] [--workers 2]   (after make train)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

TOKEN = "bench-token"
LIMIT_MS = {1: 1, 1000: 20}  # issue 13, item 15
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def in_process(members: list[str]) -> None:
    from retain import features, forest
    from retain.config import load_config
    from retain.dataset import open_dataset
    from retain.registry import Registry
    from retain.scoring import Scorer

    config = load_config()
    dataset = open_dataset(config.data.dataset)
    scorer = Scorer.from_registry(Registry(config.mlflow), config)
    frame = features.build(dataset, dataset.observed_until, config.data)
    as_of = dataset.observed_until
    for n in (1, 1000):
        rows = frame.head(n)
        scorer.score(rows, as_of)
        t = [timed(lambda rows=rows: scorer.score(rows, as_of)) for _ in range(50)]
        r = [timed(lambda rows=rows: scorer.reasons(rows, as_of)) for _ in range(5 if n > 1 else 20)]
        print(
            f"in-process Scorer, {n:>5} member(s): score+decide {np.median(t):7.2f} ms (best {min(t):.2f}; "
            f"limit {LIMIT_MS[n]} ms), reasons on the fly +{np.median(r):7.2f} ms"
        )
    # The reference, in the same run: the same scorer with every forest scored by Booster.predict.
    compiled = forest.Forest.of
    forest.Forest.of = lambda booster, num_iteration=None: None
    forest._forests.clear()
    for n in (1, 1000):
        rows = frame.head(n)
        scorer.score(rows, as_of)
        t = [timed(lambda rows=rows: scorer.score(rows, as_of)) for _ in range(50)]
        print(f"  reference, Booster.predict, {n:>5} member(s): {np.median(t):7.2f} ms (best {min(t):.2f})")
    forest.Forest.of = compiled
    forest._forests.clear()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def start_server(workers: int, gc_freeze: bool) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RETAIN_API_TOKEN": TOKEN, "RETAIN_SERVING_GC_FREEZE": "true" if gc_freeze else "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "retain.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    stop(process)
    sys.exit("the server did not become ready in 180 s")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def request(client: httpx.Client, url: str, path: str, member: str) -> int:
    if path == "/score":
        return client.post(f"{url}/score", json={"member_ids": [member]}, headers=HEADERS).status_code
    return client.post(f"{url}/ping", json={}).status_code


def sequential(url: str, path: str, members: list[str], n: int = 1500) -> np.ndarray:
    latencies = []
    with httpx.Client(timeout=10) as client:
        for i in range(n):
            start = time.perf_counter()
            request(client, url, path, members[i % len(members)])
            latencies.append((time.perf_counter() - start) * 1000)
    return np.array(latencies[100:])  # the first requests warm up


def concurrent(url: str, path: str, members: list[str], clients: int, seconds: float) -> dict:
    latencies, errors = [], [0]
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def run(k: int) -> None:
        local, bad = [], 0
        with httpx.Client(timeout=10) as client:
            i = k
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    ok = request(client, url, path, members[i % len(members)]) == 200
                except httpx.HTTPError:
                    ok = False
                local.append((time.perf_counter() - start) * 1000)
                bad += not ok
                i += clients
        with lock:
            latencies.extend(local)
            errors[0] += bad

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array(latencies)
    return {
        "rps": len(lat) / seconds,
        "p50": np.percentile(lat, 50),
        "p99": np.percentile(lat, 99),
        "errors": errors[0],
    }


def workers_of(process: subprocess.Popen) -> list[int]:
    """The worker processes: children of the server process (BentoML gives each its own group)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        if int(ppid) == process.pid and "worker" in args:
            pids.append(int(pid))
    return pids


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    from retain.config import load_config
    from retain.snapshot import read_current

    frame, meta = read_current(Path(load_config().serving.snapshot_dir))
    members = list(frame.index if "member_id" not in frame.columns else frame["member_id"])
    np.random.default_rng(0).shuffle(members)
    print(f"snapshot as of {meta['as_of'][:10]}: {len(members):,} members, models {meta['model_versions']}")
    in_process(members)
    for gc_freeze in (False, True):
        label = "GC freeze on " if gc_freeze else "GC freeze off"
        process, url = start_server(1, gc_freeze)
        try:
            seq = {p: sequential(url, p, members) for p in ("/ping", "/score")}
        finally:
            stop(process)
        s, b = seq["/score"], seq["/ping"]
        print(
            f"[{label}] sequential /score p50 {np.percentile(s, 50):.2f} ms p99 {np.percentile(s, 99):.2f} ms; "
            f"/ping p50 {np.percentile(b, 50):.2f} ms p99 {np.percentile(b, 99):.2f} ms; "
            f"p99 ratio {np.percentile(s, 99) / np.percentile(b, 99):.2f} (limit 3)"
        )
        process, url = start_server(args.workers, gc_freeze)
        try:
            pids = workers_of(process)
            results = {}
            for path in ("/ping", "/score"):
                before = {pid: cpu_seconds(pid) for pid in pids}
                results[path] = concurrent(url, path, members, args.clients, args.seconds)
                used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
                total = sum(used.values()) or 1.0
                results[path]["cpu_share"] = ", ".join(f"{pid}: {used[pid] / total:.0%}" for pid in pids)
            rss = ", ".join(f"{pid}: {rss_mib(pid):.0f} MiB" for pid in pids)
        finally:
            stop(process)
        sc, pg = results["/score"], results["/ping"]
        for path, r in results.items():
            print(
                f"[{label}] {args.clients} clients x {args.seconds:.0f} s, {args.workers} workers, {path:7s}: "
                f"{r['rps']:7.0f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, errors {r['errors']}, "
                f"worker CPU share {r['cpu_share']}"
            )
        print(
            f"[{label}] /score vs /ping: {sc['rps'] / pg['rps']:.0%} of the requests/s (limit >= 70%), "
            f"p99 ratio {sc['p99'] / pg['p99']:.2f} (limit 2); worker RSS {rss}"
        )


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
