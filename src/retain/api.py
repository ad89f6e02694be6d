"""Requests and responses of the scoring service, without the web framework: parse and validate a body,
name the field that is wrong, and shape the answer. `serving/service.py` calls these.

A `RequestError` carries the HTTP status and one sentence naming the field; the service turns it into a
4xx JSON response, never a 500.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd

from retain import contract as c

MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_ID_CHARS = 256
# Longer integer literals are read as a float (infinity past the double range): Python refuses to convert
# integers beyond 4,300 digits, and no field of the service takes one that long.
MAX_INT_DIGITS = 30
# Features that may be negative (a trend, or days until a cycle is due); every other one is >= 0.
SIGNED_FEATURE_MARKERS = ("trend", "overdue_days")


class RequestError(Exception):
    """A bad request: `status` (400, 401, 413, 422) and a sentence naming the field."""

    def __init__(self, status: int, field: str | None, message: str):
        super().__init__(message)
        # The caller's text is echoed in the answer: keep it sendable as UTF-8 (a lone surrogate is not).
        self.status, self.field, self.message = status, printable(field), printable(message)

    def body(self) -> dict:
        return {"error": self.message, "field": self.field}


def printable(text: str | None) -> str | None:
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_json(body: bytes) -> object:
    """The body as JSON. Over 5 MB is 413; not UTF-8, not JSON, NaN / Infinity literals, a key given twice
    in one object, or nesting too deep to read is 400."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, "body", f"The request body is {len(body):,} bytes; the limit is 5 MB.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, "body", f"The request body is not UTF-8 (byte {exc.start}).") from None
    try:
        return json.loads(
            text, parse_constant=_reject_constant, parse_int=_bounded_int, object_pairs_hook=_without_repeats
        )
    except RecursionError:
        raise RequestError(400, "body", "The request body nests arrays or objects too deeply.") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise RequestError(400, "body", f"The request body is not valid JSON ({exc}).") from None


def _reject_constant(name: str) -> float:
    raise RequestError(400, "body", f"{name} is not a JSON number; send null for a missing value.")


def _bounded_int(text: str) -> int | float:
    return int(text) if len(text) <= MAX_INT_DIGITS else float(text)


def _without_repeats(pairs: list[tuple[str, object]]) -> dict:
    found = dict(pairs)
    if len(found) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        repeated = next(key for key, n in counts.items() if n > 1)[:60]
        raise RequestError(400, repeated, f"The key {repeated!r} appears twice in one object; send it once.")
    return found


def _object_with(payload: object, key: str, allowed: set[str]) -> object:
    if not isinstance(payload, dict):
        raise RequestError(422, "body", f'The body must be a JSON object with "{key}".')
    unknown = sorted(set(payload) - allowed)
    if unknown:
        name = unknown[0][:60]
        raise RequestError(422, name, f"Unknown field {_short(unknown[0])}; the body takes {sorted(allowed)}.")
    if key not in payload:
        raise RequestError(422, key, f'The body lacks "{key}".')
    return payload[key]


def parse_score_request(payload: object, max_ids: int) -> list[str]:
    """`{"member_ids": [...]}`: 1 to `max_ids` distinct string ids."""
    ids = _object_with(payload, "member_ids", {"member_ids"})
    if not isinstance(ids, list):
        raise RequestError(422, "member_ids", "member_ids must be a list of strings.")
    if not ids:
        raise RequestError(422, "member_ids", f"member_ids is empty; send 1 to {max_ids:,} ids.")
    if len(ids) > max_ids:
        raise RequestError(422, "member_ids", f"member_ids has {len(ids):,} ids; the limit is {max_ids:,}.")
    seen: set[str] = set()
    for i, member_id in enumerate(ids):
        _check_id(f"member_ids[{i}]", member_id)
        if member_id in seen:
            raise RequestError(422, "member_ids", f"member_ids repeats {member_id!r}; send each id once.")
        seen.add(member_id)
    return ids


def parse_features_request(
    payload: object, feature_names: list[str], max_members: int
) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """`{"members": [{"member_id": ..., <feature>: number | null, ...}], "as_of": "YYYY-MM-DD"?}`.

    Returns the features (index member_id; an absent feature is missing) and the optional as_of.
    """
    members = _object_with(payload, "members", {"members", "as_of"})
    as_of = _parse_as_of(payload.get("as_of"))
    if not isinstance(members, list) or not members:
        raise RequestError(422, "members", f"members must be a list of 1 to {max_members:,} objects.")
    if len(members) > max_members:
        raise RequestError(422, "members", f"members has {len(members):,} entries; the limit is {max_members:,}.")
    known = set(feature_names)
    rows, ids = [], []
    for i, member in enumerate(members):
        where = f"members[{i}]"
        if not isinstance(member, dict):
            raise RequestError(422, where, f"{where} must be an object.")
        member_id = member.get(c.MEMBER_ID)
        _check_id(f"{where}.member_id", member_id)
        row = {}
        for name, value in member.items():
            if name == c.MEMBER_ID:
                continue
            if name not in known:
                field = f"{where}.{name[:60]}"
                raise RequestError(422, field, f"{field} is not a feature of this model.")
            row[name] = _feature_value(f"{where}.{name}", name, value)
        ids.append(member_id)
        rows.append(row)
    if len(set(ids)) != len(ids):
        raise RequestError(422, "members", "members repeats a member_id; send each member once.")
    frame = pd.DataFrame(rows, index=pd.Index(ids, name=c.MEMBER_ID)).reindex(columns=feature_names)
    return frame.astype("float64"), as_of


def _check_id(field: str, member_id: object) -> None:
    """A member id: a non-empty string of at most MAX_ID_CHARS characters that UTF-8 can encode."""
    if not isinstance(member_id, str) or not member_id:
        raise RequestError(422, field, f"{field} must be a non-empty string, got {_short(member_id)}.")
    if len(member_id) > MAX_ID_CHARS:
        raise RequestError(422, field, f"{field} has {len(member_id):,} characters; the limit is {MAX_ID_CHARS}.")
    try:
        member_id.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(422, field, f"{field} is not valid Unicode (it holds a lone surrogate).") from None


def _short(value: object) -> str:
    """A value for an error message, cut to a readable length."""
    text = repr(value) if not isinstance(value, float) or math.isfinite(value) else "a number too large"
    return text if len(text) <= 60 else f"{text[:57]}..."


def _feature_value(field: str, name: str, value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(422, field, f"{field} must be a number or null, got {_short(value)}.")
    if not math.isfinite(value):
        raise RequestError(422, field, f"{field} is beyond the range of a double; send a finite number.")
    if value < 0 and not any(marker in name for marker in SIGNED_FEATURE_MARKERS):
        raise RequestError(422, field, f"{field} cannot be negative, got {value}.")
    return float(value)


def _parse_as_of(value: object) -> pd.Timestamp | None:
    if value is None:
        return None
    problem = RequestError(422, "as_of", f"as_of must be a date like 2025-06-01, got {_short(value)}.")
    if not isinstance(value, str):
        raise problem
    try:
        day = pd.Timestamp(pd.to_datetime(value, format="%Y-%m-%d"))
    except (ValueError, TypeError, OverflowError):
        raise problem from None
    if pd.isna(day):  # "NaT" parses
        raise problem
    return day


def score_records(frame: pd.DataFrame) -> list[dict]:
    """One JSON-ready record per row of a scored frame (scores, decision and three reasons)."""
    records = []
    for member_id, row in zip(frame.index, frame.to_dict("records"), strict=True):
        reasons = [
            {
                "feature": row[f"reason_{k}_feature"],
                "label": row.get(f"reason_{k}"),
                "value": _json_number(row[f"reason_{k}_value"]),
                "direction": row[f"reason_{k}_direction"],
            }
            for k in (1, 2, 3)
        ]
        records.append(
            {
                "member_id": member_id,
                "churn_risk": round(float(row["churn_risk"]), 6),
                "repurchase_prob": round(float(row["repurchase_prob"]), 6),
                "segment": row["segment"],
                "action": row["action"],
                "offer_detail": row["offer_detail"],
                "expected_value": round(float(row["expected_value"]), 6),
                "reasons": reasons,
            }
        )
    return records


def _json_number(value: object) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else round(float(value), 6)
