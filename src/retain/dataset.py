"""A canonical dataset on disk: its tables plus `dataset.json`, written atomically.

Each table is a folder of member buckets, `orders/member_bucket=07/part-0.parquet` (Hive-style, so
DuckDB, Dask, Spark and Arrow read it as is): a member's rows of every table sit in the bucket numbered
by a stable hash of their member_id mod `data.buckets` (`member_buckets`), recorded in `dataset.json`.
A worker given bucket k of every table holds all the rows of those members: no shuffle (`retain.engine`).
A dataset written before buckets (one `orders.parquet` per table) is still read; `retain rebucket`
rewrites it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from retain import contract, files
from retain.config import DEFAULT_BUCKETS
from retain.errors import RetainError

METADATA_FILE = "dataset.json"
BUCKET = "member_bucket"


def member_hash(member_ids, key: str | None = None) -> np.ndarray:
    """A stable 64-bit hash of each member_id (pandas' SipHash, with its fixed key or a 16-character `key`
    of the caller's): the same on every machine and in every run."""
    values = np.asarray(member_ids, dtype=object)
    return pd.util.hash_array(values) if key is None else pd.util.hash_array(values, hash_key=key)


def member_buckets(member_ids, buckets: int) -> np.ndarray:
    """Each member's bucket: `member_hash` mod `buckets`."""
    return (member_hash(member_ids) % np.uint64(buckets)).astype(np.int64)


def bucket_name(k: int, buckets: int) -> str:
    """`member_bucket=07`: zero-padded so that the folders sort in bucket order."""
    return f"{BUCKET}={k:0{len(str(buckets - 1))}d}"


def table_files(folder: Path, table: str) -> list[Path]:
    """The Parquet files of a table in a dataset folder, in bucket order ([] when the table is absent)."""
    single = folder / f"{table}.parquet"
    if single.exists():
        return [single]
    return sorted((folder / table).glob(f"{BUCKET}=*/*.parquet"))


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

    @property
    def buckets(self) -> int | None:
        """The number of member buckets; None for a dataset written before buckets (one file a table)."""
        return self.metadata.get("buckets")

    def has(self, table: str) -> bool:
        return bool(self.files(table))

    def files(self, table: str) -> list[Path]:
        return table_files(self.path, table)

    def bucket_files(self, table: str, buckets: list[int]) -> list[Path]:
        """The files of the given buckets of a table."""
        n = self.buckets
        names = {bucket_name(k, n) for k in buckets}
        return [path for path in self.files(table) if path.parent.name in names]

    def scan(self, table: str) -> str:
        """The table's files as one DuckDB source (a glob over the buckets, or the single file)."""
        single = self.path / f"{table}.parquet"
        return parquet_source([single if single.exists() else self.path / table / f"{BUCKET}=*" / "*.parquet"])

    def read(self, table: str, columns: list[str] | None = None) -> pd.DataFrame:
        return read_files(self.files(table), columns)


def parquet_source(paths: list[Path | str]) -> str:
    """Parquet files (or globs) as one DuckDB source, read as they are (the bucket folder's name is not a
    column)."""
    listed = ", ".join("'" + str(path).replace("'", "''") + "'" for path in paths)
    return f"read_parquet([{listed}], hive_partitioning = false)"


def read_files(paths: list[Path], columns: list[str] | None = None) -> pd.DataFrame:
    """Parquet files as one frame, in the order given (without the bucket column)."""
    table = pads.dataset([str(p) for p in paths], format="parquet").to_table(columns=columns)
    return table.to_pandas()


def open_dataset(path: Path | str) -> Dataset:
    """Open a dataset folder written by `retain ingest` or `retain simulate`."""
    path = Path(path)
    meta_path = path / METADATA_FILE
    if not meta_path.exists():
        raise RetainError(
            f"{path} is not a retain dataset (no {METADATA_FILE}); build one with `retain ingest` or `retain simulate`."
        )
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    if not table_files(path, "orders"):
        raise RetainError(f"Dataset {path} has no orders table, the one required table.")
    return Dataset(path=path, metadata=metadata)


def fingerprint_files(folder: Path, paths: list[Path]) -> str:
    """A short SHA-256 over the named files' bytes and their paths in `folder`, in path order: equal
    data, equal fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def write_metadata(folder: Path, observed_until: pd.Timestamp, currency: str, extra: dict | None = None) -> dict:
    """Describe the tables in `folder` (rows, date range, fingerprint) in `dataset.json` and return it."""
    present = {t: table_files(folder, t) for t in contract.TABLES}
    tables = sorted(t for t, paths in present.items() if paths)
    rows = {t: sum(pq.ParquetFile(p).metadata.num_rows for p in present[t]) for t in tables}
    orders_range = read_files(present["orders"], [contract.ORDERED_AT])[contract.ORDERED_AT]
    metadata = {
        "observed_until": observed_until.isoformat(),
        "first_order_at": orders_range.min().isoformat() if len(orders_range) else None,
        "last_order_at": orders_range.max().isoformat() if len(orders_range) else None,
        "currency": currency,
        "rows": rows,
        "fingerprint": fingerprint_files(folder, [p for t in tables for p in present[t]]),
        **(extra or {}),
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return metadata


def write_dataset(
    out: Path,
    tables: dict[str, pd.DataFrame],
    observed_until: pd.Timestamp,
    currency: str,
    extra: dict | None = None,
    buckets: int = DEFAULT_BUCKETS,
) -> dict:
    """Validate canonical frames against the contract and write them as a dataset folder, atomically."""
    with atomic_folder(Path(out)) as folder:
        write_tables(folder, tables, buckets)
        return write_metadata(folder, observed_until, currency, {**(extra or {}), "buckets": buckets})


def write_tables(folder: Path, tables: dict[str, pd.DataFrame], buckets: int) -> None:
    """Each table, validated against the contract, into its member buckets."""
    for table, frame in tables.items():
        with BucketWriter(folder, table, buckets) as writer:
            writer.write_frame(frame)


def write_buckets(folder: Path, table: str, rows: pa.Table, buckets: int, part: str = "part-0") -> None:
    """Rows of one table into `folder/<table>/member_bucket=<k>/<part>.parquet` (a table with no rows: an
    empty file in bucket 0, so the table and its columns are still there)."""
    with BucketWriter(folder, table, buckets, part) as writer:
        writer.write(rows)


class BucketWriter:
    """Writes one table into its member buckets a batch at a time: one Parquet file per bucket, a row
    group per batch (`retain ingest` streams a file through it: memory is bounded by a batch). Every batch
    takes the first one's schema. Used as a context manager; the files are complete once it closes."""

    def __init__(self, folder: Path, table: str, buckets: int, part: str = "part-0"):
        self.folder, self.table, self.buckets, self.part = Path(folder), table, buckets, part
        self.schema: pa.Schema | None = None
        self.writers: dict[int, pq.ParquetWriter] = {}

    def __enter__(self) -> BucketWriter:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None and not self.writers and self.schema is not None:  # no rows: an empty file keeps the columns
            self._writer(0)
        for writer in self.writers.values():
            writer.close()

    def _writer(self, k: int) -> pq.ParquetWriter:
        if k not in self.writers:
            where = self.folder / self.table / bucket_name(k, self.buckets)
            where.mkdir(parents=True, exist_ok=True)
            self.writers[k] = pq.ParquetWriter(where / f"{self.part}.parquet", self.schema)
        return self.writers[k]

    def write_frame(self, frame: pd.DataFrame) -> None:
        """Canonical rows, validated against the table's contract, then written (`write`)."""
        contract.schema(self.table).validate(frame)
        self.write(pa.Table.from_pandas(frame, preserve_index=False))

    def write(self, rows: pa.Table) -> None:
        self.schema = rows.schema if self.schema is None else self.schema
        if len(rows) == 0:
            return
        rows = rows.cast(self.schema)
        bucket = member_buckets(rows.column(contract.MEMBER_ID).to_numpy(zero_copy_only=False), self.buckets)
        order = np.argsort(bucket, kind="stable")
        rows, bucket = rows.take(pa.array(order)), bucket[order]
        present, starts = np.unique(bucket, return_index=True)
        ends = [*starts[1:], len(bucket)]
        for k, start, end in zip(present, starts, ends, strict=True):
            self._writer(int(k)).write_table(rows.slice(int(start), int(end - start)))


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


def rebucket(dataset: Dataset, buckets: int) -> dict:
    """Rewrite a dataset's tables into `buckets` member buckets (a dataset written before buckets, or with
    another number of them), keeping everything else in the folder; atomically. Returns the metadata."""
    tables = [t for t in contract.TABLES if dataset.has(t)]
    kept = {"observed_until", "first_order_at", "last_order_at", "currency", "rows", "fingerprint", "buckets"}
    with atomic_folder(dataset.path) as folder:
        for table in tables:
            rows = pads.dataset([str(p) for p in dataset.files(table)], format="parquet").to_table()
            write_buckets(folder, table, rows, buckets)
        for item in dataset.path.iterdir():  # truth.parquet, quarantine/, ingest_report.json, lines/ ...
            is_table = item.name in tables or item.name in {f"{t}.parquet" for t in tables}
            if is_table or item.name == METADATA_FILE:
                continue
            if item.is_dir():
                shutil.copytree(item, folder / item.name)
            else:
                shutil.copy2(item, folder / item.name)
        extra = {k: v for k, v in dataset.metadata.items() if k not in kept} | {"buckets": buckets}
        return write_metadata(folder, dataset.observed_until, dataset.metadata.get("currency", ""), extra)
