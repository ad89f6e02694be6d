"""The dataset as DuckDB views: one connection per use, with a view per present table that has every
contract column (NULL where the file lacks an optional one). The features, labels, offers' outcomes,
contact rules and the readout all query through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb

from retain import contract as c
from retain.dataset import Dataset

SQL_TYPE = {
    "id": "VARCHAR",
    "text": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "money": "DOUBLE",
    "count": "BIGINT",
    "bool": "BOOLEAN",
}


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def register_dataset(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> set[str]:
    """Create a view per present table over its Parquet file; return the table names."""
    tables = {t for t in c.TABLES if dataset.has(t)}
    for table in tables:
        source = dataset.scan(table)
        columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        contract_view(con, table, source, columns)
    return tables


def contract_view(con: duckdb.DuckDBPyConnection, table: str, source: str, columns: set[str]) -> None:
    """Create the view `table` over `source` (a Parquet scan, a registered frame) with the contract's columns."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {contract_select(table, source, columns)}")


def contract_select(table: str, source: str, columns: set[str]) -> str:
    """SELECT every contract column of `table` from `source`, NULL for optional columns it lacks."""
    parts = [
        name if name in columns else f"NULL::{SQL_TYPE.get(kind, 'VARCHAR')} AS {name}"
        for name, kind in c.TABLES[table].items()
    ]
    return f"SELECT {', '.join(parts)} FROM {source}"


@contextlib.contextmanager
def dataset_connection(
    dataset: Dataset, threads: int | None = None
) -> Iterator[tuple[duckdb.DuckDBPyConnection, set[str]]]:
    """A DuckDB connection with a view per present table of `dataset`, and those tables' names; closed
    on leaving."""
    con = connect(threads)
    try:
        yield con, register_dataset(con, dataset)
    finally:
        con.close()
