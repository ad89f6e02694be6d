"""The promotion calendar, from one source: `data.promotion_windows` in retain.toml, month-day ranges,
inclusive (618: ["06-01", "06-18"]; Double 11: ["11-01", "11-11"]). The features (orders bought in a
promotion), the models (promotion days ahead in the horizon) and the simulator (its seasons) read it here.

A day is compared as the number month x 100 + day: measured far cheaper in SQL than formatting it as text.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

Windows = list[list[str]] | tuple[tuple[str, str], ...]


def month_days(windows: Windows) -> list[tuple[int, int]]:
    """Each window as (first, last) month x 100 + day: ["06-01", "06-18"] -> (601, 618)."""
    return [tuple(int(text.replace("-", "")) for text in window) for window in windows]


def in_windows(days: pd.DatetimeIndex, windows: Windows) -> np.ndarray:
    """True for the days inside a window."""
    md = np.asarray(days.month * 100 + days.day)
    hit = np.zeros(len(days), dtype=bool)
    for first, last in month_days(windows):
        hit |= (md >= first) & (md <= last)
    return hit


def last_days(days: pd.DatetimeIndex, windows: Windows, n: int) -> np.ndarray:
    """True for the last `n` days of each window (the peak: 6/16-6/18, 11/9-11/11)."""
    md = np.asarray(days.month * 100 + days.day)
    hit = np.zeros(len(days), dtype=bool)
    for first, last in month_days(windows):
        peak_start = pd.Timestamp(2001, last // 100, last % 100) - pd.Timedelta(days=n - 1)
        hit |= (md >= max(first, peak_start.month * 100 + peak_start.day)) & (md <= last)
    return hit


def sql_condition(windows: Windows, column: str = "ordered_at") -> str:
    """SQL that is true when `column` falls in a window."""
    if not windows:
        return "FALSE"
    md = f"(month({column}) * 100 + day({column}))"
    return "(" + " OR ".join(f"{md} BETWEEN {first} AND {last}" for first, last in month_days(windows)) + ")"


CALENDAR_PREFIX = "promo_days_ahead_"


def is_calendar(feature: str) -> bool:
    """Whether a model input is the calendar (`days_ahead`): the same for every member on a day."""
    return feature.startswith(CALENDAR_PREFIX)


def days_ahead(as_of: pd.Timestamp, horizon_days: int, windows: Windows) -> dict[str, int]:
    """Days of each window in [as_of, as_of + horizon): known in advance, one feature per window named
    after its dates (`promo_days_ahead_1101_1111`), since promotions differ in strength and a model can
    only learn that when it can tell them apart."""
    return dict(_days_ahead(pd.Timestamp(as_of), horizon_days, tuple(tuple(w) for w in windows)))


@functools.lru_cache(maxsize=256)  # a pure calendar function, asked for the same day on every request
def _days_ahead(as_of: pd.Timestamp, horizon_days: int, windows: tuple) -> tuple:
    days = pd.date_range(as_of, periods=horizon_days, freq="D")
    md = np.asarray(days.month * 100 + days.day)
    return tuple(
        (f"{CALENDAR_PREFIX}{first:04d}_{last:04d}", int(((md >= first) & (md <= last)).sum()))
        for first, last in month_days(windows)
    )
