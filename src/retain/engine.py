"""Where the per-member work runs: on this machine (DuckDB, the default) or on a Dask cluster.

`[engine] kind = "local" | "dask"` in retain.toml; `scheduler_address` names a running Dask scheduler
(`tls://host:8786`, with the `[engine] tls_*` files), empty starts a `LocalCluster` on 127.0.0.1 for
the run. Both engines run the same functions, so their results agree:

- `features(dataset, as_of)`: `retain.features.compute` (DuckDB) over the member's rows. On Dask, each
  table is read as a Dask DataFrame, tagged with partition = hash(member_id) mod `partitions`, shuffled
  on that tag (so one member never spans two partitions, and partition i of every table holds the same
  members), and the same function runs per partition over that partition's frames.
- `score(dataset, as_of, scorer)`: features and `Scorer.score` per partition, the scorer scattered to
  the workers once. Returns the features and the scores on the driver, sorted by member_id.

The training fit itself runs on the driver (see the README: "Scale"); only the feature snapshots use
the engine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from retain import connection
from retain import contract as c
from retain import features as feature_builder
from retain.config import Config, DataConfig, EngineConfig, loopback
from retain.dataset import Dataset
from retain.errors import RetainError

PART = "_part"
TLS_KEYS = ("engine.tls_ca_file", "engine.tls_cert_file", "engine.tls_key_file")


class LocalEngine:
    """DuckDB over the dataset's Parquet files, in this process."""

    kind = "local"

    def __init__(self, config: Config):
        self.config = config

    def features(self, dataset: Dataset, as_of: pd.Timestamp) -> pd.DataFrame:
        return feature_builder.build(dataset, as_of, self.config.data)

    def score(self, dataset: Dataset, as_of: pd.Timestamp, scorer) -> tuple[pd.DataFrame, pd.DataFrame]:
        features = self.features(dataset, as_of)
        return features, scorer.score(features, as_of)

    def close(self) -> None:
        pass


def partition_features(frames: dict[str, pd.DataFrame], as_of: pd.Timestamp, data_config: DataConfig) -> pd.DataFrame:
    """The local feature computation over one partition's frames (one per present table)."""
    con = connection.connect(threads=1)
    try:
        for table, frame in frames.items():
            con.register(f"{table}_partition", frame.drop(columns=PART, errors="ignore"))
            connection.contract_view(con, table, f"{table}_partition", set(frame.columns))
        if frames["orders"].empty:
            return pd.DataFrame(index=pd.Index([], name=c.MEMBER_ID))
        return feature_builder.compute(con, as_of, data_config, set(frames))
    finally:
        con.close()


def partition_scores(
    frames: dict[str, pd.DataFrame], as_of: pd.Timestamp, data_config: DataConfig, scorer
) -> tuple[pd.DataFrame, pd.DataFrame]:
    features = partition_features(frames, as_of, data_config)
    return features, scorer.score(features, as_of) if len(features) else pd.DataFrame()


class DaskEngine:
    """The same per-member functions mapped over member-hash partitions on a Dask cluster."""

    kind = "dask"

    def __init__(self, config: Config, partitions: int | None = None):
        from distributed import Client, LocalCluster

        logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
        self.config = config
        address = config.engine.scheduler_address
        security = cluster_security(config.engine)
        try:
            if address:
                self.cluster = None
                self.client = Client(address, timeout="10s", security=security)
            else:
                self.cluster = LocalCluster(
                    n_workers=config.engine.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",  # None still takes :8787; a free loopback port instead
                )
                self.client = Client(self.cluster)
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: the TLS files do not fit
            raise RetainError(f"Could not reach the Dask scheduler at {address or 'a local cluster'}: {exc}") from None
        self.partitions = partitions or config.engine.partitions

    def _tables(self, dataset: Dataset, as_of: pd.Timestamp) -> dict:
        """Each present table as a Dask DataFrame of the rows dated before `as_of`, tagged with
        hash(member_id) mod n and shuffled on the tag: every table puts a member in the same partition."""
        import dask.dataframe as dd

        n = self.partitions
        tables = {}
        for table in c.TABLES:
            if not dataset.has(table):
                continue
            frame = dd.read_parquet(str(dataset.table_path(table)))
            if table in c.TIME_COLUMN:  # later rows never count: do not ship them
                frame = frame[frame[c.TIME_COLUMN[table]] < as_of]
            tables[table] = frame.map_partitions(tag_partition, n).shuffle(PART, npartitions=n)
        return tables

    def _run(self, dataset: Dataset, as_of: pd.Timestamp, function, *args) -> list:
        from dask import delayed

        parts = {name: frame.to_delayed() for name, frame in self._tables(dataset, as_of).items()}
        tasks = [
            delayed(function)({name: pieces[i] for name, pieces in parts.items()}, as_of, *args)
            for i in range(self.partitions)
        ]
        try:
            return self.client.compute(tasks, sync=True)
        except Exception as exc:  # a lost worker, a dead scheduler: one sentence, not a traceback
            raise RetainError(
                f"The Dask computation failed ({type(exc).__name__}: {exc}); nothing was written."
            ) from None

    def features(self, dataset: Dataset, as_of: pd.Timestamp) -> pd.DataFrame:
        parts = self._run(dataset, as_of, partition_features, self.config.data)
        return combine([p for p in parts if len(p)])

    def score(self, dataset: Dataset, as_of: pd.Timestamp, scorer) -> tuple[pd.DataFrame, pd.DataFrame]:
        [shared] = self.client.scatter([scorer], broadcast=True)  # the models go to each worker once
        parts = self._run(dataset, as_of, partition_scores, self.config.data, shared)
        parts = [p for p in parts if len(p[0])]
        return combine([f for f, _ in parts]), combine([s for _, s in parts])

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def cluster_security(engine: EngineConfig):
    """The `distributed.Security` for `engine.scheduler_address`: TLS with the configured files for
    tls://; nothing for a local cluster or a scheduler on this machine. Plain tcp:// to another machine is
    refused unless `engine.allow_insecure`: anyone who reaches that port can run code on the workers, which
    hold member data, and the traffic (pickles included) is readable on the wire."""
    from distributed import Security

    address = engine.scheduler_address
    files = {"tls_ca_file": engine.tls_ca_file, "tls_client_cert": engine.tls_cert_file}
    files["tls_client_key"] = engine.tls_key_file
    if address.startswith("tls://"):
        missing = [key for key, name in zip(TLS_KEYS, files.values(), strict=True) if not name]
        if missing:
            raise RetainError(
                f"A tls:// scheduler needs {', '.join(missing)} in [engine]: the CA and this client's "
                "certificate and key."
            )
        for name in files.values():
            if not Path(name).is_file():
                raise RetainError(f"The TLS file {name} in [engine] does not exist.")
        return Security(**files, require_encryption=True)
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    if address and not engine.allow_insecure and not loopback(host):
        raise RetainError(
            f"Refusing plain {address}: anyone who reaches that port can run code on workers that hold member "
            "data. Use a tls:// scheduler with engine.tls_ca_file, tls_cert_file and tls_key_file (see the "
            "README, Scale), or set engine.allow_insecure = true on a private network you trust."
        )
    return None


def tag_partition(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """Add the member's partition: a stable hash of member_id mod n (the same in every table)."""
    hashed = pd.util.hash_array(frame[c.MEMBER_ID].to_numpy(dtype=object))
    return frame.assign(**{PART: (hashed % np.uint64(n)).astype("int64")})


def combine(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The partitions' frames as one, sorted by member_id like the local engine's."""
    if not parts:
        return pd.DataFrame(index=pd.Index([], name=c.MEMBER_ID))
    return pd.concat(parts).sort_index()


@contextlib.contextmanager
def open_engine(config: Config) -> Iterator[LocalEngine | DaskEngine]:
    """The engine `engine.kind` names, closed (and its local cluster stopped) on leaving."""
    if config.engine.kind not in ("local", "dask"):
        raise RetainError(f'engine.kind must be "local" or "dask", got {config.engine.kind!r}.')
    engine = DaskEngine(config) if config.engine.kind == "dask" else LocalEngine(config)
    try:
        yield engine
    finally:
        engine.close()
