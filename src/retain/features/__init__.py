"""Point-in-time member features, computed with DuckDB over the dataset's tables.

`build(dataset, as_of, data_config)` returns one row per member with at least one paid order before
`as_of`, indexed by `member_id`. Every family sees only what was known before `as_of`: rows dated at
or after it, redemptions and refunds recorded at or after it, and subscriptions ending at or after it
(which still count as active). A table that is absent means its features are absent, not zeros.

`compute(con, as_of, data_config, tables)` is the same computation over tables already registered
in a DuckDB connection (Parquet views locally, a partition's frames on Dask).
"""

from __future__ import annotations

from importlib import resources

import duckdb
import pandas as pd

from retain import contract as c
from retain.config import DataConfig
from retain.dataset import Dataset
from retain.features.categories import category_mix_sql, cycles_sql, quote

# Feature families: (name, tables they need). Each is a SELECT returning one row per member_id.
STATIC_FAMILIES = (
    ("core", {"orders"}),
    ("gaps", {"orders"}),
    ("activity", {"orders"}),
    ("order_mix", {"orders"}),
    ("events", {"events"}),
    ("offers", {"offers"}),
    ("subscriptions", {"subscriptions"}),
    ("members", {"members"}),
)
# Counts that are zero, not missing, for a member absent from a table that is present.
ZERO_WHEN_ABSENT = (
    "views_30d",
    "views_90d",
    "favorites_90d",
    "carts_30d",
    "carts_90d",
    "events_trend_90d",
    "events_total",
    "offers_received",
    "offers_redeemed",
    "active_subscriptions",
    "subscriptions_ever",
)
SQL_TYPE = {
    "id": "VARCHAR",
    "text": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "money": "DOUBLE",
    "count": "BIGINT",
    "bool": "BOOLEAN",
}


def read_sql(name: str) -> str:
    return resources.files("retain.features").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def connect(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def register_dataset(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> set[str]:
    """Create a view per present table over its Parquet file; return the table names."""
    tables = {t for t in c.TABLES if dataset.has(t)}
    for table in tables:
        source = f"read_parquet({quote(str(dataset.table_path(table)))})"
        columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {contract_select(table, source, columns)}")
    return tables


def contract_select(table: str, source: str, columns: set[str]) -> str:
    """SELECT every contract column of `table` from `source`, NULL for optional columns it lacks."""
    parts = [
        name if name in columns else f"NULL::{SQL_TYPE.get(kind, 'VARCHAR')} AS {name}"
        for name, kind in c.TABLES[table].items()
    ]
    return f"SELECT {', '.join(parts)} FROM {source}"


def build(dataset: Dataset, as_of: pd.Timestamp, data_config: DataConfig, threads: int | None = None) -> pd.DataFrame:
    """Features of every member with a paid order before `as_of` (index `member_id`, sorted)."""
    con = connect(threads)
    try:
        tables = register_dataset(con, dataset)
        return compute(con, as_of, data_config, tables)
    finally:
        con.close()


def compute(
    con: duckdb.DuckDBPyConnection, as_of: pd.Timestamp, data_config: DataConfig, tables: set[str]
) -> pd.DataFrame:
    """Run every feature family whose tables are present and join them on `member_id`."""
    params = {
        ":as_of": f"TIMESTAMP '{pd.Timestamp(as_of).isoformat(sep=' ')}'",
        ":promo_condition": promotion_condition(data_config.promotion_windows),
    }
    con.execute(_bind(read_sql("prepare"), params))
    families = [(name, read_sql(name)) for name, needs in STATIC_FAMILIES if needs <= tables]
    families.append(("category_mix", category_mix_sql(data_config.categories)))
    cycles = cycles_sql(data_config.categories, data_config.replenishment_categories)
    if cycles:
        families.append(("cycles", cycles))
    for name, sql in families:
        con.execute(f"CREATE OR REPLACE TEMP TABLE f_{name} AS {_bind(sql, params)}")
    joins = " ".join(f"LEFT JOIN f_{name} USING (member_id)" for name, _ in families[1:])
    frame = con.execute(f"SELECT * FROM f_core {joins} ORDER BY member_id").df()
    counts = [col for col in ZERO_WHEN_ABSENT if col in frame]
    frame[counts] = frame[counts].fillna(0).astype("int64")
    return frame.set_index(c.MEMBER_ID)


def promotion_condition(windows: list[list[str]]) -> str:
    """SQL that is true when `ordered_at` falls in a promotion window (MM-DD ranges, inclusive)."""
    if not windows:
        return "FALSE"
    md = "strftime(ordered_at, '%m-%d')"
    return "(" + " OR ".join(f"{md} BETWEEN {quote(lo)} AND {quote(hi)}" for lo, hi in windows) + ")"


def _bind(sql: str, params: dict[str, str]) -> str:
    for token, literal in params.items():
        sql = sql.replace(token, literal)
    return sql
