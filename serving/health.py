"""The latest `retain monitor` figures as Prometheus gauges on the service's /metrics.

`retain monitor` writes `monitor.json` beside the exports (`monitor.report_file`); each worker reads it when
it starts and again whenever the file changes (a `stat` every POLL_SECONDS in a daemon thread), and sets:

- `retain_monitor_psi{task, input}`: the PSI of each champion's score and top inputs since training;
- `retain_monitor_realised{task, metric}`: roc_auc, pr_auc and ece of the latest export whose window closed;
- `retain_monitor_estimated_roc_auc{task}`: the estimate for the latest export (window still open);
- `retain_monitor_volume_ratio{table}`: a feed's rows a day lately against before training (1: unchanged);
- `retain_monitor_alerts`: how many alerts the latest run fired (0: all holds).

A missing or unreadable file sets nothing (and is logged once per change), so a scrape never fails on it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from prometheus_client import Gauge

log = logging.getLogger("retain.serving")
POLL_SECONDS = 60.0
# every worker reads the same file: the latest value is the value (BentoML runs prometheus_client in
# multiprocess mode; its own bentoml.metrics wrapper is deprecated in favour of prometheus_client)
MODE = "mostrecent"

PSI = Gauge(
    name="retain_monitor_psi",
    documentation="Population stability index since training of a champion's score and top inputs (retain monitor)",
    labelnames=["task", "input"],
    multiprocess_mode=MODE,
)
REALISED = Gauge(
    name="retain_monitor_realised",
    documentation="Realised accuracy of the latest export whose outcome window closed (retain monitor)",
    labelnames=["task", "metric"],
    multiprocess_mode=MODE,
)
ESTIMATED = Gauge(
    name="retain_monitor_estimated_roc_auc",
    documentation="ROC-AUC expected of the latest export from its calibrated probabilities (window still open)",
    labelnames=["task"],
    multiprocess_mode=MODE,
)
VOLUME = Gauge(
    name="retain_monitor_volume_ratio",
    documentation="Rows a day of a feed lately against before the champions were trained (retain monitor)",
    labelnames=["table"],
    multiprocess_mode=MODE,
)
ALERTS = Gauge(
    name="retain_monitor_alerts",
    documentation="Alerts fired by the latest retain monitor run (0: every figure holds)",
    multiprocess_mode=MODE,
)


def publish(doc: dict) -> None:
    """Set the gauges from a monitor.json document."""
    for report in doc.get("drift", []):
        for row in report["psi"]:
            if row["top"] and row["psi"] is not None:
                PSI.labels(task=report["task"], input=row["feature"]).set(row["psi"])
    latest_realised, latest = {}, {}
    for row in doc.get("days", []):  # in day order: the last one of each kind wins
        latest[row["task"]] = row
        if row["status"] == "realised":
            latest_realised[row["task"]] = row
    for task, row in latest_realised.items():
        for metric in ("roc_auc", "pr_auc", "ece"):
            if row.get(metric) is not None:
                REALISED.labels(task=task, metric=metric).set(row[metric])
    for task, row in latest.items():
        if row.get("expected_roc_auc") is not None:
            ESTIMATED.labels(task=task).set(row["expected_roc_auc"])
    for row in doc.get("volume", []):
        VOLUME.labels(table=row["table"]).set(row["ratio"])
    ALERTS.set(len(doc.get("alerts", [])))


class HealthWatcher:
    """Publishes `path` now and whenever it changes."""

    def __init__(self, path: Path, poll_seconds: float = POLL_SECONDS):
        self.path, self.poll_seconds = Path(path), poll_seconds
        self.stamp: int | None = None
        self.check()
        threading.Thread(target=self._run, name="retain-health", daemon=True).start()

    def check(self) -> None:
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            return
        if stamp == self.stamp:
            return
        self.stamp = stamp
        try:
            publish(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("could not read %s for /metrics (%s); the gauges keep their values", self.path, exc)

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.poll_seconds):
            self.check()
