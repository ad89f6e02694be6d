"""What a scoring worker holds: the champion scorer and the scored snapshot, swapped as one object.

`ServingState.load` reads both; `Generation` is a marker file beside the snapshots that `/reload`
bumps, so every worker sees a reload (each checks the marker on every request, a `stat`), and a request
already running keeps the state it started with.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from retain import api, files, snapshot
from retain.config import Config
from retain.scoring import Scorer

GENERATION_FILE = "GENERATION"
DERIVED_PREFIXES = ("bgnbd_", "promo_days_ahead_")


@dataclass
class ServingState:
    scorer: Scorer
    as_of: pd.Timestamp
    model_versions: dict[str, str]
    dataset_fingerprint: str
    feature_names: list[str]
    records: dict[str, str]  # member_id -> the member's score as a JSON object, ready to send
    generation: int
    # Members whose snapshot row has no precomputed reasons (the daily export explains only its list):
    # their reasons are computed on their first request, then kept in `records`.
    pending: pd.DataFrame | None = None
    _explaining: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, config: Config, registry, generation: int) -> ServingState:
        scorer = Scorer.from_registry(registry, config)
        frame, meta = snapshot.read_current(Path(config.serving.snapshot_dir))
        frame = frame.set_index("member_id") if "member_id" in frame.columns else frame
        explained = frame["reason_1_feature"].notna().to_numpy()
        features = [name for name in scorer.churn.feature_names if not name.startswith(DERIVED_PREFIXES)]
        return cls(
            scorer,
            pd.Timestamp(meta["as_of"]),
            meta["model_versions"],
            meta["dataset_fingerprint"],
            features,
            encode(frame[explained]),
            generation,
            pending=frame[~explained].drop(columns=[c for c in frame.columns if c.startswith("reason_")]),
        )

    def needs_explaining(self, member_ids: list[str]) -> bool:
        """Whether some requested member has no reasons yet (computing them is CPU work)."""
        if self.pending is None or self.pending.empty:
            return False
        return any(m not in self.records and m in self.pending.index for m in member_ids)

    def explain_pending(self, member_ids: list[str]) -> None:
        """Compute the reasons of requested members the snapshot has none for, and keep their records."""
        if not self.needs_explaining(member_ids):
            return
        with self._explaining:  # requests run in threads: one computes, the next finds the records kept
            wanted = [m for m in dict.fromkeys(member_ids) if m not in self.records and m in self.pending.index]
            if wanted:
                rows = self.pending.loc[wanted]
                self.records.update(encode(rows.join(self.scorer.reasons(rows, self.as_of))))

    def score_response(self, member_ids: list[str]) -> str:
        """The /score body, assembled from the precomputed JSON of each member."""
        self.explain_pending(member_ids)
        known = [self.records[m] for m in member_ids if m in self.records]
        unknown = [m for m in member_ids if m not in self.records]
        head = json.dumps({"as_of": self.as_of.date().isoformat(), "model_versions": self.model_versions})[:-1]
        return f'{head},"scores":[{",".join(known)}],"unknown":{json.dumps(unknown, ensure_ascii=False)}}}'

    def score_features(self, features: pd.DataFrame, as_of: pd.Timestamp | None) -> dict:
        """Score fresh features on the fly, with reasons computed per request."""
        as_of = as_of or self.as_of
        scored = self.scorer.score(features, as_of).join(self.scorer.reasons(features, as_of))
        return {
            "as_of": as_of.date().isoformat(),
            "model_versions": self.scorer.versions,
            "scores": api.score_records(scored),
            "unknown": [],
        }

    def describe(self) -> dict:
        """What GET /model reports for this worker."""
        return {
            "worker_pid": os.getpid(),
            "generation": self.generation,
            "snapshot_as_of": self.as_of.date().isoformat(),
            "snapshot_members": len(self.records) + (0 if self.pending is None else len(self.pending)),
            "dataset_fingerprint": self.dataset_fingerprint,
            "models": {
                f"retain-{task}": {
                    "version": self.scorer.versions[f"retain-{task}"],
                    "alias": "champion",
                    "family": self.scorer.family(task),
                    "metrics": {
                        k.removeprefix("retain.metric."): float(v)
                        for k, v in tags.items()
                        if k.startswith("retain.metric.")
                    },
                    "dataset_fingerprint": tags.get("retain.dataset_fingerprint"),
                }
                for task, tags in (self.scorer.tags or {}).items()
            },
            "snapshot_model_versions": self.model_versions,
        }


def encode(frame: pd.DataFrame) -> dict[str, str]:
    """member_id -> the member's score record as compact JSON."""
    return {
        member_id: json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        for member_id, record in zip(frame.index, api.score_records(frame), strict=True)
    }


class WorkerRegistry:
    """Each worker writes what it serves to `<snapshot_dir>/workers/<pid>.json`, so that `/model`, which
    one worker answers, can show every live worker's models and snapshot."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / "workers"

    def publish(self, state: ServingState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(state.describe())
        files.write_file(self.folder / f"{os.getpid()}.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def live(self) -> list[dict]:
        workers = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                if files.process_alive(int(path.stem)):  # is that worker still running?
                    workers.append(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, json.JSONDecodeError, FileNotFoundError):
                continue
        return workers


class Generation:
    """A counter in a file beside the snapshots; its change tells every worker to reload."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / GENERATION_FILE

    def read(self) -> int:
        try:
            return int(self.path.read_text(encoding="utf-8").strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def bump(self) -> int:
        value = self.read() + 1
        files.write_file(self.path, lambda tmp: tmp.write_text(f"{value}\n", encoding="utf-8"))
        return value
