"""The data contract, named once: tables, columns, allowed values, quarantine reasons and pandera schemas.

A dataset is a folder with one Parquet file per table (`orders.parquet`, ...) and `dataset.json`.
Only `orders` is required. `member_id` is a string everywhere; timestamps are shop-local and naive.
"""

from __future__ import annotations

import pandera.pandas as pa

# Column names ------------------------------------------------------------------------------------
MEMBER_ID = "member_id"
ORDER_ID = "order_id"
ORDERED_AT = "ordered_at"
AMOUNT = "amount"
CATEGORY = "category"
QUANTITY = "quantity"
PRODUCTS = "products"
COUPON_ID = "coupon_id"
STATUS = "status"
REFUNDED_AT = "refunded_at"
JOINED_AT = "joined_at"
TIER = "tier"
TIER_SINCE = "tier_since"  # when the member reached the tier they hold now
EVENT_AT = "event_at"
EVENT_TYPE = "event_type"
OFFER_ID = "offer_id"
SENT_AT = "sent_at"
OFFER_TYPE = "offer_type"
TREATED = "treated"
VALUE = "value"
REDEEMED_AT = "redeemed_at"
STARTED_AT = "started_at"
ENDED_AT = "ended_at"
REASON = "reason"
UNTIL = "until"

# Allowed values ----------------------------------------------------------------------------------
PAID, REFUNDED = "paid", "refunded"
STATUSES = (PAID, REFUNDED)
TIERS = ("bronze", "silver", "gold", "platinum", "diamond")  # five membership levels, lowest first
EVENT_TYPES = ("view", "favorite", "cart")
OFFER_TYPES = ("winback_coupon", "subscription")
SUPPRESSION_REASONS = ("opted_out", "complaint", "legal_hold")

# Tables: required columns first, then optional ones, with their canonical kind ------------------
# kind: "id" (string key), "text", "timestamp", "money" (float >= 0), "count" (int >= 0),
#       "bool", or a tuple of allowed text values.
TABLES: dict[str, dict[str, object]] = {
    "orders": {
        ORDER_ID: "id",
        MEMBER_ID: "id",
        ORDERED_AT: "timestamp",
        AMOUNT: "money",
        CATEGORY: "text",
        QUANTITY: "count",  # items in the order
        PRODUCTS: "count",  # distinct products in the order (line-item files)
        COUPON_ID: "text",
        STATUS: STATUSES,
        REFUNDED_AT: "timestamp",
    },
    # A tier counts at a past as_of only when it was held then (tier_since before it): a shop's members
    # table holds today's tier, which at an earlier date would be the future.
    "members": {MEMBER_ID: "id", JOINED_AT: "timestamp", TIER: TIERS, TIER_SINCE: "timestamp"},
    "events": {MEMBER_ID: "id", EVENT_AT: "timestamp", EVENT_TYPE: EVENT_TYPES, CATEGORY: "text"},
    "offers": {
        OFFER_ID: "id",
        MEMBER_ID: "id",
        SENT_AT: "timestamp",
        OFFER_TYPE: OFFER_TYPES,
        TREATED: "bool",
        VALUE: "money",
        REDEEMED_AT: "timestamp",
    },
    "subscriptions": {MEMBER_ID: "id", CATEGORY: "text", STARTED_AT: "timestamp", ENDED_AT: "timestamp"},
    # Members no list may contact: opted out, complaint, legal hold; until empty means for good.
    "suppressions": {MEMBER_ID: "id", REASON: SUPPRESSION_REASONS, UNTIL: "timestamp"},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "orders": (ORDER_ID, MEMBER_ID, ORDERED_AT, AMOUNT),
    "members": (MEMBER_ID,),
    "events": (MEMBER_ID, EVENT_AT, EVENT_TYPE),
    "offers": (OFFER_ID, MEMBER_ID, SENT_AT, OFFER_TYPE, TREATED),
    "subscriptions": (MEMBER_ID, CATEGORY, STARTED_AT),
    "suppressions": (MEMBER_ID, REASON),
}
# The column that dates a row: rows at or after the dataset's `observed_until` are future rows.
TIME_COLUMN = {"orders": ORDERED_AT, "events": EVENT_AT, "offers": SENT_AT, "subscriptions": STARTED_AT}
# The column whose duplicates are quarantined (the first occurrence is kept).
UNIQUE_KEY = {"orders": ORDER_ID, "offers": OFFER_ID, "members": MEMBER_ID}

# Quarantine reasons (fixed codes) ----------------------------------------------------------------
MISSING_MEMBER_ID = "missing_member_id"
MISSING_VALUE = "missing_value"  # another required column is empty
BAD_DATE = "bad_date"  # does not parse with the mapping's format
BAD_AMOUNT = "bad_amount"  # a money or count column that is not a number
NEGATIVE_AMOUNT = "negative_amount"
BAD_VALUE = "bad_value"  # not one of the allowed values (status, tier, event_type, ...)
DUPLICATE_KEY = {"orders": "duplicate_order_id", "offers": "duplicate_offer_id", "members": "duplicate_member_id"}
FUTURE_DATE = "future_date"  # at or after --as-of
ORDER_MEMBER_CONFLICT = "order_member_conflict"  # line items of one order id under different members
# Not a bad row: a cancellation that matches no earlier order (kept in the quarantine file, not counted).
UNMATCHED_CANCELLATION = "unmatched_cancellation"
REASONS = (
    MISSING_MEMBER_ID,
    MISSING_VALUE,
    BAD_DATE,
    BAD_AMOUNT,
    NEGATIVE_AMOUNT,
    BAD_VALUE,
    *DUPLICATE_KEY.values(),
    FUTURE_DATE,
    ORDER_MEMBER_CONFLICT,
    UNMATCHED_CANCELLATION,
)
QUARANTINE_REASON = "_reason"
QUARANTINE_ROW = "_source_row"


def schema(table: str) -> pa.DataFrameSchema:
    """The pandera schema of a canonical table: the types and rules every written dataset satisfies."""
    columns = {name: _column(table, name, kind) for name, kind in TABLES[table].items()}
    return pa.DataFrameSchema(
        columns, strict=True, name=table, unique=[UNIQUE_KEY[table]] if table in UNIQUE_KEY else None
    )


def _column(table: str, name: str, kind: object) -> pa.Column:
    required = name in REQUIRED[table]
    nullable = not required
    if kind == "id":
        return pa.Column(str, pa.Check.str_length(min_value=1), nullable=nullable, required=required)
    if kind == "text":
        return pa.Column(str, nullable=nullable, required=required)
    if kind == "timestamp":
        return pa.Column("datetime64[us]", nullable=nullable, required=required)
    if kind == "money":
        return pa.Column(float, pa.Check.ge(0), nullable=nullable, required=required)
    if kind == "count":
        return pa.Column("Int64", pa.Check.ge(0), nullable=nullable, required=required)
    if kind == "bool":
        return pa.Column(bool, nullable=nullable, required=required)
    return pa.Column(str, pa.Check.isin(list(kind)), nullable=nullable, required=required)
