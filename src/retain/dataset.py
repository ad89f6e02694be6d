"""A canonical dataset on disk: one Parquet file per table plus `dataset.json`, written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from retain import contract, files
from retain.errors import RetainError

METADATA_FILE = "dataset.json"


@dataclass(frozen=True)
class Dataset:
    """A dataset folder and its metadata (`dataset.json`)."""

    path: Path
    metadata: dict

    @property
    def observed_until(self) -> pd.Timestamp:
        """The exclusive end of the observed period: no row is at or after it."""
        return pd.Timestamp(self.metadata["observed_until"])

    @property
    def fingerprint(self) -> str:
        return self.metadata["fingerprint"]

    def has(self, table: str) -> bool:
        return (self.path / f"{table}.parquet").exists()

    def table_path(self, table: str) -> Path:
        return self.path / f"{table}.parquet"

    def read(self, table: str, columns: list[str] | None = None) -> pd.DataFrame:
        return pd.read_parquet(self.table_path(table), columns=columns)


def open_dataset(path: Path | str) -> Dataset:
    """Open a dataset folder written by `retain ingest` or `retain simulate`."""
    path = Path(path)
    meta_path = path / METADATA_FILE
    if not meta_path.exists():
        raise RetainError(
            f"{path} is not a retain dataset (no {METADATA_FILE}); build one with `retain ingest` or `retain simulate`."
        )
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    if not (path / "orders.parquet").exists():
        raise RetainError(f"Dataset {path} has no orders.parquet, the one required table.")
    return Dataset(path=path, metadata=metadata)


def fingerprint_files(paths: list[Path]) -> str:
    """A short SHA-256 over the named files' bytes, in name order: equal data, equal fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def write_metadata(folder: Path, observed_until: pd.Timestamp, currency: str, extra: dict | None = None) -> dict:
    """Describe the tables in `folder` (rows, date range, fingerprint) in `dataset.json` and return it."""
    tables = sorted(t for t in contract.TABLES if (folder / f"{t}.parquet").exists())
    rows = {t: pq.ParquetFile(folder / f"{t}.parquet").metadata.num_rows for t in tables}
    orders_range = pd.read_parquet(folder / "orders.parquet", columns=[contract.ORDERED_AT])[contract.ORDERED_AT]
    metadata = {
        "observed_until": observed_until.isoformat(),
        "first_order_at": orders_range.min().isoformat() if len(orders_range) else None,
        "last_order_at": orders_range.max().isoformat() if len(orders_range) else None,
        "currency": currency,
        "rows": rows,
        "fingerprint": fingerprint_files([folder / f"{t}.parquet" for t in tables]),
        **(extra or {}),
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return metadata


def write_dataset(
    out: Path, tables: dict[str, pd.DataFrame], observed_until: pd.Timestamp, currency: str, extra: dict | None = None
) -> dict:
    """Validate canonical frames against the contract and write them as a dataset folder, atomically."""
    with atomic_folder(Path(out)) as folder:
        write_tables(folder, tables)
        return write_metadata(folder, observed_until, currency, extra)


def write_tables(folder: Path, tables: dict[str, pd.DataFrame]) -> None:
    for table, frame in tables.items():
        contract.schema(table).validate(frame)
        frame.to_parquet(folder / f"{table}.parquet", index=False)


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it vanishes.

    `out` must be absent, empty or a retain dataset (it holds `dataset.json`): a folder of the user's
    is refused, never deleted."""
    out = Path(out)
    files.check_replaceable(out, METADATA_FILE, "retain dataset")
    with files.staging_folder(out) as tmp:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes 0700; a dataset folder reads like any folder the user makes
        files.fsync_tree(tmp)
        files.check_replaceable(out, METADATA_FILE, "retain dataset")  # again: it may have changed meanwhile
        files.replace_folder(tmp, out)
