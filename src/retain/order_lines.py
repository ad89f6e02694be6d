"""Orders as shops export them: one row per line item, cancellations as rows of their own, guest
checkouts, and lines that are not products (postage, fees). `retain.ingest` calls `orders_result` for
the orders file; every row read ends up in exactly one of these, and the report counts each:

- **guest**: no member id. Not an error (a shop sells to guests): kept out of the dataset and out of
  `ingest.max_bad_share`; the report gives their share of revenue.
- **excluded**: a value of a mapped column matches a pattern of `[orders.exclude]` (`POST`, `BANK
  CHARGES`, `ADJUST*`: shell-style patterns, case-sensitive), e.g. postage and fees, which are not purchases.
- **quarantined**: a bad row (bad date, bad number, a missing value, a date in the future, ...), with
  its reason: the only rows counted against `ingest.max_bad_share`.
- **cancellation**: a row `[orders.cancel]` marks (an order-id prefix such as Online Retail's `C`, a
  negative quantity, a status value). Matched to the order it cancels, it refunds that order: in full
  (status `refunded`, `refunded_at` = the cancellation's time) or in part (the amount reduced). A
  cancellation that matches nothing is kept in the quarantine file as `unmatched_cancellation`, not
  counted as a bad row.
- **kept**: a sale line, written as (part of) an order.

With `grain = "line"` lines are grouped into orders by the mapped `order_id`: the amount is the sum of the
lines' `line_amount`, or of quantity x `unit_price`; the order's category is that of its largest line;
`quantity` is the items and `products` the distinct `product_id`s. A cancellation is matched to the latest
earlier sale line of the same member and product (`product_id` mapped), else to the order with its own
order id (the prefix removed) of the same member. With `grain = "order"` (the default) each row is an
order, as the contract has it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from retain import contract as c
from retain.errors import RetainError

GRAINS = ("order", "line")
# Columns a line-item file may map beside the contract's order columns.
UNIT_PRICE, LINE_AMOUNT, PRODUCT_ID = "unit_price", "line_amount", "product_id"
LINE_COLUMNS = (UNIT_PRICE, LINE_AMOUNT, PRODUCT_ID)
GUEST, EXCLUDED, CANCELLED, UNMATCHED = "guest", "excluded", "cancellations_matched", "cancellations_unmatched"


@dataclass(frozen=True)
class CancelRule:
    """Which rows are cancellations (`[orders.cancel]` in the mapping); any of the three marks one."""

    order_id_prefix: str = ""  # e.g. "C": Online Retail's C536379 cancels lines of an earlier invoice
    negative_quantity: bool = False  # a line with a negative quantity is a return
    # values of the mapped `status` column for an order cancelled or refunded in full on its own row (a
    # Shopify "refunded" order): the order is written as refunded; any other value is a paid order
    status_values: list[str] = field(default_factory=list)

    @property
    def separate_rows(self) -> bool:
        """Whether cancellations come as rows of their own, to be matched to the order they cancel."""
        return bool(self.order_id_prefix or self.negative_quantity)

    def marks(self, text: pd.DataFrame, quantity: pd.Series) -> pd.Series:
        """True for the rows of their own this rule marks as cancellations (`text`: canonical columns as text)."""
        hit = pd.Series(False, index=text.index)
        if self.order_id_prefix and c.ORDER_ID in text:
            hit |= text[c.ORDER_ID].str.startswith(self.order_id_prefix, na=False)
        if self.negative_quantity:
            hit |= quantity.lt(0).fillna(False)
        return hit

    def status_text(self, status: pd.Series) -> pd.Series:
        """The status column with this rule's values read as `refunded` and any other as `paid`."""
        if not self.status_values:
            return status
        refunded = status.str.lower().isin([v.lower() for v in self.status_values])
        return pd.Series(np.where(refunded, c.REFUNDED, c.PAID), index=status.index)


def cancel_rule(section: dict, where: str) -> CancelRule:
    try:
        return CancelRule(**section)
    except TypeError as exc:
        raise RetainError(f"Mapping section [orders.cancel] in {where} has an unknown key: {exc}.") from None


def excluded_rows(text: pd.DataFrame, patterns: dict[str, list[str]]) -> pd.Series:
    """True where a column's value matches one of its exclusion patterns."""
    hit = pd.Series(False, index=text.index)
    for column, wanted in patterns.items():
        if column not in text:
            continue
        values = text[column].fillna("")
        for pattern in wanted:
            hit |= (
                values.map(lambda v, p=pattern: fnmatch.fnmatchcase(v, p))
                if "*" in pattern or "?" in pattern
                else values == pattern
            )
    return hit


@dataclass
class OrderRows:
    """The orders file after ingest: orders to write, quarantined rows (bad: counted against the limit),
    rows set aside (unmatched cancellations: kept, not bad) and the count of every kind of row."""

    rows: pd.DataFrame
    quarantine: pd.DataFrame
    set_aside: pd.DataFrame
    counts: dict[str, int | float]


def signed_number(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Numbers that may be negative (a return's quantity): (values, True where the text is not a number)."""
    empty = text.isna() | (text == "")
    numbers = pd.to_numeric(text.mask(empty), errors="coerce").astype(float)
    bad = (numbers.isna() | ~np.isfinite(numbers.fillna(0))) & ~empty
    return numbers.where(~bad), bad


def line_amounts(text: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per line: (amount, quantity, True where a number does not parse). The amount is `line_amount` where
    mapped, else quantity (1 when not mapped) x `unit_price`; a cancellation's amount is negative or not,
    as the file has it (callers take its size)."""
    if c.QUANTITY in text:
        quantity, bad = signed_number(text[c.QUANTITY])
    else:
        quantity, bad = pd.Series(1.0, index=text.index), pd.Series(False, index=text.index)
    if LINE_AMOUNT in text:
        amount, bad_amount = signed_number(text[LINE_AMOUNT])
    else:
        price, bad_amount = signed_number(text[UNIT_PRICE])
        amount = quantity.fillna(1.0) * price
    return amount, quantity, bad | bad_amount


def group_lines(lines: pd.DataFrame) -> pd.DataFrame:
    """Sale lines (order_id, member_id, ordered_at, amount, quantity, product_id, category, coupon_id) into
    one row per order: the earliest time, summed amount and items, distinct products, the category of the
    largest line, the first coupon."""
    lines = lines.sort_values([c.ORDER_ID, c.ORDERED_AT], kind="stable")
    grouped = lines.groupby(c.ORDER_ID, sort=False)
    orders = pd.DataFrame(
        {
            c.MEMBER_ID: grouped[c.MEMBER_ID].first(),
            c.ORDERED_AT: grouped[c.ORDERED_AT].min(),
            c.AMOUNT: grouped[c.AMOUNT].sum(),
            c.QUANTITY: grouped[c.QUANTITY].sum(min_count=1).round().astype("Int64"),
        }
    )
    if PRODUCT_ID in lines:
        orders[c.PRODUCTS] = grouped[PRODUCT_ID].nunique().astype("Int64")
    if c.CATEGORY in lines:
        largest = lines.loc[lines.groupby(c.ORDER_ID, sort=False)[c.AMOUNT].idxmax(), [c.ORDER_ID, c.CATEGORY]]
        orders[c.CATEGORY] = largest.set_index(c.ORDER_ID)[c.CATEGORY]
    if c.COUPON_ID in lines:
        orders[c.COUPON_ID] = grouped[c.COUPON_ID].first()
    orders[c.STATUS] = c.PAID
    orders[c.REFUNDED_AT] = pd.Series(pd.NaT, index=orders.index, dtype="datetime64[us]")
    return orders.reset_index()


def match_cancellations(cancels: pd.DataFrame, lines: pd.DataFrame, prefix: str) -> pd.Series:
    """The order each cancellation cancels (NaN where none): the latest earlier sale line of the same
    member and product when products are known, else the same member's order with the cancellation's own
    order id, its prefix removed, placed before it."""
    if cancels.empty:
        return pd.Series(np.nan, index=cancels.index, dtype=object)
    if PRODUCT_ID in cancels and cancels[PRODUCT_ID].notna().any():
        left = cancels.reset_index().sort_values(c.ORDERED_AT, kind="stable")
        right = lines[[c.MEMBER_ID, PRODUCT_ID, c.ORDERED_AT, c.ORDER_ID]].sort_values(c.ORDERED_AT, kind="stable")
        matched = pd.merge_asof(
            left.drop(columns=[c.ORDER_ID]),
            right,
            on=c.ORDERED_AT,
            by=[c.MEMBER_ID, PRODUCT_ID],
            allow_exact_matches=False,
            direction="backward",
        )
        return matched.set_index("index")[c.ORDER_ID].reindex(cancels.index)
    own = cancels[c.ORDER_ID].str.removeprefix(prefix)
    first = lines.groupby(c.ORDER_ID)[[c.MEMBER_ID, c.ORDERED_AT]].first()
    found = first.reindex(own.to_numpy())
    ok = (found[c.MEMBER_ID].to_numpy() == cancels[c.MEMBER_ID].to_numpy()) & (
        found[c.ORDERED_AT].to_numpy() < cancels[c.ORDERED_AT].to_numpy()
    )
    return pd.Series(np.where(ok, own.to_numpy(), np.nan), index=cancels.index, dtype=object)


def apply_refunds(orders: pd.DataFrame, cancels: pd.DataFrame, matched: pd.Series) -> pd.DataFrame:
    """Refund each matched order by its cancellations' amounts: in full (status refunded, refunded_at the
    last cancellation's time, the amount as paid) or in part (the amount reduced)."""
    hit = cancels.assign(_order=matched.to_numpy())[matched.notna().to_numpy()]
    refunds = hit.groupby("_order").agg(refund=(c.AMOUNT, lambda a: a.abs().sum()), at=(c.ORDERED_AT, "max"))
    orders = orders.set_index(c.ORDER_ID)
    refund = refunds["refund"].reindex(orders.index).fillna(0.0)
    full = (refund > 0) & (refund >= orders[c.AMOUNT] - 1e-9)
    orders[c.STATUS] = np.where(full, c.REFUNDED, orders[c.STATUS])
    orders[c.REFUNDED_AT] = refunds["at"].reindex(orders.index).where(full).astype("datetime64[us]")
    orders[c.AMOUNT] = np.where(full, orders[c.AMOUNT], orders[c.AMOUNT] - refund)
    return orders.reset_index()
