"""The BentoML service: load the champions and the snapshot once per worker, then serve the routes of
`serving/app.py`. BentoML's /healthz, /livez, /readyz and /metrics stay open; /readyz turns ready only
once the models and the snapshot are loaded. /metrics also carries the latest `retain monitor` figures
(`serving/health.py`).

Start it with `retain serve` (or `make serve`), which binds 127.0.0.1 unless told otherwise and mounts
the routes under `serving.path_prefix` (passed here as RETAIN_SERVING_PATH_PREFIX).

A reload that another worker triggered is picked up by the next request, in a thread and one at a time;
if it fails, this worker keeps serving what it has and tries again after a back-off (1 s, doubling up to
60 s), instead of retrying on every request.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from pathlib import Path

import bentoml
from starlette.applications import Starlette

from retain.config import load_config, loopback
from retain.errors import RetainError
from retain.registry import Registry
from retain.serving_state import Generation, ServingState, WorkerRegistry
from serving.app import build_app
from serving.health import HealthWatcher

log = logging.getLogger("retain.serving")
app = Starlette()  # routes are attached in __init__, once the worker's state exists
MAX_BACKOFF_SECONDS = 60.0


@bentoml.asgi_app(app, path=os.environ.get("RETAIN_SERVING_PATH_PREFIX") or "/")
@bentoml.service(name="retain", workers=int(os.environ.get("RETAIN_SERVING_WORKERS", "1")), traffic={"timeout": 30})
class RetainService:
    def __init__(self) -> None:
        self.config = load_config()
        self.token = self.config.api_token
        if self.token is None and not self.config.serving.allow_anonymous:
            raise RetainError(
                "RETAIN_API_TOKEN is not set: set it, or set serving.allow_anonymous = true for local use."
            )
        if self.token is None and not loopback(self.config.serving.host):
            raise RetainError(
                f"serving.allow_anonymous = true is for local use: binding {self.config.serving.host} needs "
                "RETAIN_API_TOKEN."
            )
        if self.token is None:
            log.warning("serving without authentication (serving.allow_anonymous = true): local use only")
        self.registry = Registry(self.config.mlflow)
        self.generation = Generation(Path(self.config.serving.snapshot_dir))
        self.workers = WorkerRegistry(Path(self.config.serving.snapshot_dir))
        self._lock = threading.Lock()
        self._retry_at, self._failures = 0.0, 0
        self._marker = self._marker_stamp()
        self.state = ServingState.load(self.config, self.registry, self.generation.read())
        self.workers.publish(self.state)
        self.health = HealthWatcher(Path(self.config.monitor.report_file))  # /metrics: the latest retain monitor
        self._freeze_gc()
        app.router.routes[:] = build_app(self).router.routes

    @bentoml.api(route="/ping")
    async def ping(self) -> dict:
        """A constant: the bare-endpoint reference of `make bench-serve`."""
        return {"ok": True}

    def __is_ready__(self) -> bool:
        return getattr(self, "state", None) is not None

    def is_stale(self) -> bool:
        """Whether another worker bumped the generation marker since this one loaded (a `stat`), and no
        back-off after a failed reload is running."""
        return self._marker_stamp() != self._marker and time.monotonic() >= self._retry_at

    def refresh(self) -> ServingState:
        """Load what another worker's /reload published (called in a thread). One load at a time: a request
        arriving meanwhile is served with the current state. A failed load backs off, logged once a try."""
        if not self._lock.acquire(blocking=False):
            return self.state
        try:
            stamp = self._marker_stamp()
            if stamp == self._marker or time.monotonic() < self._retry_at:
                return self.state
            try:
                self._swap(ServingState.load(self.config, self.registry, self.generation.read()), stamp)
            except Exception:
                self._failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 2.0 ** (self._failures - 1))
                self._retry_at = time.monotonic() + delay
                log.exception(
                    "reload failed; still serving generation %s, next try in %.0f s", self.state.generation, delay
                )
            return self.state
        finally:
            self._lock.release()

    def reload(self) -> ServingState:
        """Load the current champions and snapshot, then tell the other workers (bump the marker)."""
        with self._lock:
            fresh = ServingState.load(self.config, self.registry, self.generation.read() + 1)
            self.generation.bump()
            self._swap(fresh, self._marker_stamp())
        return fresh

    def _swap(self, fresh: ServingState, stamp: int) -> None:
        self.state = fresh  # one assignment: requests in flight keep the old state
        self._marker, self._retry_at, self._failures = stamp, 0.0, 0
        self.workers.publish(fresh)
        self._freeze_gc()

    def _marker_stamp(self) -> int:
        try:
            return self.generation.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def _freeze_gc(self) -> None:
        # The models and the snapshot are long-lived: keep the collector from walking them on every pass.
        if self.config.serving.gc_freeze:
            gc.collect()
            gc.freeze()
