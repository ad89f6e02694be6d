"""The scored feature snapshot the service serves: one Parquet file per `as_of`, keyed by member_id, with
the features, the champion scores and precomputed reasons, tied to the model versions that made them.

`<serving.snapshot_dir>/<as_of>.parquet` plus `CURRENT` beside it (the file name the service loads), both
written atomically and flushed to disk, so a reader never sees a half-written snapshot, even after a power
loss. `CURRENT` moves only forward in time (or when asked): a back-dated export never turns the live
service back to an older day.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from retain import features as feature_builder
from retain import files
from retain.config import Config
from retain.dataset import Dataset
from retain.decisions import NONE
from retain.errors import RetainError
from retain.scoring import Scorer

CURRENT = "CURRENT"


def build(scorer: Scorer, features: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Features and scores for every member (index member_id), with reasons precomputed for the members a
    decision reaches (an action other than `none`: those a CRM tool asks about); the service computes the
    others' on their first request, as for the export's snapshot. On the demo that is 21,379 of 47,996
    members, and about 15 s of the training job's 28 s of contributions."""
    scored = features.join(scorer.score(features, as_of))
    acting = (scored["action"] != NONE).to_numpy()
    return scored.join(scorer.reasons(features[acting], as_of).reindex(features.index))


def write(
    frame: pd.DataFrame,
    as_of: pd.Timestamp,
    versions: dict[str, str],
    fingerprint: str,
    folder: Path,
    file_mode: int = 0o640,
    serve: bool = False,
) -> Path:
    """Write the snapshot with its metadata (as_of, model versions, dataset fingerprint); point CURRENT at
    it when it is at least as new as the one served now, or when `serve`."""
    if not folder.exists():
        folder.mkdir(parents=True)
        files.restrict(folder, file_mode)
    path = folder / f"{as_of.date().isoformat()}.parquet"
    table = pa.Table.from_pandas(frame, preserve_index=True)
    meta = {"as_of": as_of.isoformat(), "model_versions": versions, "dataset_fingerprint": fingerprint}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"retain": json.dumps(meta).encode()})
    files.write_file(path, lambda tmp: pq.write_table(table, tmp), file_mode)
    served = served_as_of(folder)
    if serve or served is None or as_of >= served:
        files.write_file(folder / CURRENT, lambda tmp: tmp.write_text(path.name + "\n", encoding="utf-8"), file_mode)
    return path


def served_as_of(folder: Path) -> pd.Timestamp | None:
    """The day of the snapshot CURRENT points at (None when there is none)."""
    try:
        name = (folder / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    try:
        return pd.Timestamp(name.removesuffix(".parquet"))
    except ValueError:
        return None


def read_current(folder: Path) -> tuple[pd.DataFrame, dict]:
    """The snapshot CURRENT points at, and its metadata."""
    pointer = folder / CURRENT
    if not pointer.exists():
        raise RetainError(f"There is no snapshot in {folder}/ yet; run `make train` (or `retain export`) first.")
    path = folder / pointer.read_text(encoding="utf-8").strip()
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"retain"])
    return table.to_pandas(), meta


def write_latest(dataset: Dataset, config: Config, registry, features: pd.DataFrame | None = None) -> Path:
    """Score every member as of the dataset's `observed_until` with the champions and write the snapshot
    (`features`: the features as of that day when the caller has them)."""
    scorer = Scorer.from_registry(registry, config)
    as_of = dataset.observed_until
    features = feature_builder.build(dataset, as_of, config.data) if features is None else features
    folder = Path(config.serving.snapshot_dir)
    frame = build(scorer, features, as_of)
    return write(frame, as_of, scorer.versions, dataset.fingerprint, folder, file_mode=config.export.mode)
