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

from retain import connection, promotions
from retain import contract as c
from retain.config import DataConfig
from retain.connection import dataset_connection
from retain.dataset import Dataset
from retain.features.categories import category_mix_aggregates, category_mix_summary, cycles_sql

# Feature families. Aggregate families are lists of aggregates over one source, composed into a single
# GROUP BY member_id per source (one scan, one join); query families are whole SELECTs. Each returns one
# row per member_id and needs the tables named.
AGGREGATE_FAMILIES = {"paid": ("core", "activity", "order_mix")}
QUERY_FAMILIES = (
    ("gaps", {"orders"}),
    ("refunds", {"orders"}),
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


def read_sql(name: str) -> str:
    return resources.files("retain.features").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def build(dataset: Dataset, as_of: pd.Timestamp, data_config: DataConfig, threads: int | None = None) -> pd.DataFrame:
    """Features of every member with a paid order before `as_of` (index `member_id`, sorted)."""
    with dataset_connection(dataset, threads) as (con, tables):
        return compute(con, as_of, data_config, tables)


def columns_from(table: str, data_config: DataConfig) -> set[str]:
    """The feature columns that `table` feeds: for orders, every column orders alone give; for another
    table, the columns it adds to them. Read off `compute` run on empty tables, with and without it."""

    def columns(tables: set[str]) -> set[str]:
        no_rows = "(SELECT 1 AS nothing WHERE false)"  # no row, no column: every contract column typed NULL
        con = connection.connect(threads=1)
        try:
            for name in tables:
                connection.contract_view(con, name, no_rows, set())
            return set(compute(con, pd.Timestamp("2000-01-01"), data_config, tables).columns)
        finally:
            con.close()

    alone = columns({"orders"})
    return alone if table == "orders" else columns({"orders", table}) - alone


def compute(
    con: duckdb.DuckDBPyConnection, as_of: pd.Timestamp, data_config: DataConfig, tables: set[str]
) -> pd.DataFrame:
    """Run every feature family whose tables are present and join them on `member_id`."""
    params = sql_params(as_of, data_config.promotion_windows)
    prepare(con, as_of, data_config.refund_delay_days)
    paid_aggregates = [read_sql(name) for name in AGGREGATE_FAMILIES["paid"]]
    paid_aggregates.append(category_mix_aggregates(data_config.categories))
    families = [("paid", aggregates_query("paid", paid_aggregates))]
    families += [(name, read_sql(name)) for name, needs in QUERY_FAMILIES if needs <= tables]
    cycles = cycles_sql(data_config.categories, data_config.replenishment_categories)
    if cycles:
        families.append(("cycles", cycles))
    for name, sql in families:
        con.execute(f"CREATE OR REPLACE TEMP TABLE f_{name} AS {bind(sql, params)}")
    return _join_families(con, [name for name, _ in families], data_config)


def _join_families(con: duckdb.DuckDBPyConnection, names: list[str], data_config: DataConfig) -> pd.DataFrame:
    """Join the family tables on member_id, fill counts that are zero, add derived columns, sort.

    Done in DuckDB rather than pandas: measured about 1.5 s less on a million members.
    """
    joins = " ".join(f"LEFT JOIN f_{name} USING (member_id)" for name in names[1:])
    joined = f"SELECT * FROM f_{names[0]} {joins}"
    columns = {row[0] for row in con.execute(f"DESCRIBE {joined}").fetchall()}
    zeros = [col for col in ZERO_WHEN_ABSENT if col in columns]
    replace = f" REPLACE ({', '.join(f'coalesce({col}, 0) AS {col}' for col in zeros)})" if zeros else ""
    derived = [category_mix_summary(data_config.categories)]
    if "refunded_orders" in columns:
        derived.append("refunded_orders / (order_count + refunded_orders) AS refund_share")
    query = f"SELECT *, {', '.join(derived)} FROM (SELECT *{replace} FROM ({joined})) ORDER BY member_id"
    frame = con.sql(query).to_arrow_table().to_pandas(self_destruct=True)
    return frame.set_index(c.MEMBER_ID)


def aggregates_query(source: str, aggregate_lists: list[str]) -> str:
    """One GROUP BY member_id over `source` computing every list of aggregates (SQL with comments allowed)."""
    lists = ["\n".join(ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")) for sql in aggregate_lists]
    return f"SELECT member_id, {', '.join(lists)} FROM {source} GROUP BY member_id"


def sql_params(as_of: pd.Timestamp, promotion_windows: list[list[str]] = ()) -> dict[str, str]:
    """The literals the SQL files' placeholders stand for (`:as_of`, `:promo_condition`)."""
    return {
        ":as_of": f"TIMESTAMP '{pd.Timestamp(as_of).isoformat(sep=' ')}'",
        ":promo_condition": promotions.sql_condition(list(promotion_windows)),
    }


def prepare(con: duckdb.DuckDBPyConnection, as_of: pd.Timestamp, refund_delay_days: int | None = None) -> None:
    """Create the `known_orders` and `paid` views as of `as_of` over the registered `orders`. A refund
    without `refunded_at` counts from its order date plus `refund_delay_days` (None: at once)."""
    known = "TRUE" if refund_delay_days is None else f"ordered_at + INTERVAL {int(refund_delay_days)} DAY < :as_of"
    con.execute(bind(read_sql("prepare").replace(":undated_refund_known", known), sql_params(as_of)))


def bind(sql: str, params: dict[str, str]) -> str:
    for token, literal in params.items():
        sql = sql.replace(token, literal)
    return sql
