"""The BentoML service: load the champions and the snapshot once per worker, then serve the routes of
`serving/app.py`. BentoML's /healthz, /livez, /readyz and /metrics stay open; /readyz turns ready only
once the models and the snapshot are loaded.

Start it with `retain serve` (or `make serve`), which binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from pathlib import Path

import bentoml
from starlette.applications import Starlette

from retain.config import load_config
from retain.errors import RetainError
from retain.registry import Registry
from retain.serving_state import Generation, ServingState, WorkerRegistry
from serving.app import build_app

log = logging.getLogger("retain.serving")
app = Starlette()  # routes are attached in __init__, once the worker's state exists


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="retain", workers=int(os.environ.get("RETAIN_SERVING_WORKERS", "1")), traffic={"timeout": 30})
class RetainService:
    def __init__(self) -> None:
        self.config = load_config()
        self.token = self.config.api_token
        if self.token is None and not self.config.serving.allow_anonymous:
            raise RetainError(
                "RETAIN_API_TOKEN is not set: set it, or set serving.allow_anonymous = true for local use."
            )
        if self.token is None:
            log.warning("serving without authentication (serving.allow_anonymous = true): local use only")
        self.registry = Registry(self.config.mlflow)
        self.generation = Generation(Path(self.config.serving.snapshot_dir))
        self.workers = WorkerRegistry(Path(self.config.serving.snapshot_dir))
        self._lock = threading.Lock()
        self._marker = self._marker_stamp()
        self.state = ServingState.load(self.config, self.registry, self.generation.read())
        self.workers.publish(self.state)
        self._freeze_gc()
        app.router.routes[:] = build_app(self).router.routes

    @bentoml.api(route="/ping")
    async def ping(self) -> dict:
        """A constant: the bare-endpoint reference of `make bench-serve`."""
        return {"ok": True}

    def __is_ready__(self) -> bool:
        return getattr(self, "state", None) is not None

    def current_state(self) -> ServingState:
        """This worker's state, reloaded first when another worker bumped the generation marker."""
        stamp = self._marker_stamp()
        if stamp != self._marker:
            with self._lock:
                if stamp != self._marker:
                    self.state = ServingState.load(self.config, self.registry, self.generation.read())
                    self._marker = stamp
                    self.workers.publish(self.state)
                    self._freeze_gc()
        return self.state

    def reload(self) -> ServingState:
        """Load the current champions and snapshot, then tell the other workers (bump the marker)."""
        with self._lock:
            fresh = ServingState.load(self.config, self.registry, self.generation.read() + 1)
            self.generation.bump()
            self._marker = self._marker_stamp()
            self.state = fresh  # one assignment: requests in flight keep the old state
            self.workers.publish(fresh)
            self._freeze_gc()
        return fresh

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
