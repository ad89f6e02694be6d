"""Labels as of a cutoff: what happened in the window [as_of, as_of + horizon_days).

- churn: no paid order in the window;
- repurchase: at least one paid order in the window.

The population is the features' population: members with a paid order (as known at `as_of`) before
`as_of`. An order's final status decides whether a window order was paid.
"""

from __future__ import annotations

import pandas as pd

from retain import contract as c
from retain.connection import dataset_connection
from retain.dataset import Dataset
from retain.errors import RetainError
from retain.features import prepare

TASKS = ("churn", "repurchase")


def check_window(dataset: Dataset, as_of: pd.Timestamp, horizon_days: int) -> None:
    """A label window must close by the end of the observed period, or its labels would be silent zeros."""
    end = pd.Timestamp(as_of) + pd.Timedelta(days=horizon_days)
    if end > dataset.observed_until:
        raise RetainError(
            f"The {horizon_days}-day label window from {pd.Timestamp(as_of).date()} ends {end.date()}, after the "
            f"data's observed period ends ({dataset.observed_until.date()}); "
            "pick an earlier cutoff or a shorter horizon."
        )


def build(dataset: Dataset, as_of: pd.Timestamp, task: str, horizon_days: int) -> pd.Series:
    """A 0/1 label per member of the population, indexed by `member_id` (sorted), named after the task."""
    return build_tasks(dataset, as_of, {task: horizon_days})[task]


def build_tasks(dataset: Dataset, as_of: pd.Timestamp, horizons: dict[str, int]) -> pd.DataFrame:
    """The labels of several tasks (task -> horizon in days) as of one cutoff, from one pass over the orders:
    one 0/1 column per task, indexed by `member_id` (sorted)."""
    for task in horizons:
        if task not in TASKS:
            raise RetainError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    for horizon_days in horizons.values():
        check_window(dataset, as_of, horizon_days)
    as_of = pd.Timestamp(as_of)
    end = as_of + pd.Timedelta(days=max(horizons.values()))
    with dataset_connection(dataset) as (con, _):
        prepare(con, as_of)
        frame = con.execute(
            """
            SELECT p.member_id, w.first_at
            FROM (SELECT DISTINCT member_id FROM paid) p
            LEFT JOIN (
                SELECT member_id, min(ordered_at) AS first_at FROM orders
                WHERE ordered_at >= ? AND ordered_at < ? AND coalesce(status, 'paid') = 'paid'
                GROUP BY member_id
            ) w USING (member_id)
            ORDER BY p.member_id
            """,
            [as_of.to_pydatetime(), end.to_pydatetime()],
        ).df()
    first = frame.set_index(c.MEMBER_ID)["first_at"]
    out = {}
    for task, horizon_days in horizons.items():
        bought = (first < as_of + pd.Timedelta(days=horizon_days)).fillna(False).astype(bool)  # no order: NaT
        out[task] = (~bought if task == "churn" else bought).astype("int8")
    return pd.DataFrame(out, index=first.index)
