"""The simulated shop's orders as a shop would export them: one row per line item (`retain simulate
--grain line`), so the line-item path of `retain ingest` runs on data the project makes itself.

Each order becomes one to three lines whose quantities sum to the order's items and whose quantity x unit
price sum to its amount; the first line is the largest (over half the amount) and carries the order's
category and coupon, the others another category. A refunded order gets a cancellation row per line
(invoice `C<order id>`, negative quantity) at its refund time. Guest checkouts (no customer) and postage
lines (`POST`) are added, as real logs have them; ingest sets both apart. Times carry the shop's UTC
offset (+08:00). `lines/mapping.toml` maps the file; ingesting it gives back the orders table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from retain import contract as c
from retain.simulate.process import CATEGORIES

FILE, MAPPING = "orders_lines.csv", "mapping.toml"
GUEST_SHARE = 0.05  # guest orders added, as a share of the members' orders
POSTAGE_SHARE = 0.2  # orders with a postage line
MAPPING_TEXT = """# The simulated shop's orders as line items (retain simulate --grain line):
# retain ingest --orders {folder}/orders_lines.csv --mapping {folder}/mapping.toml --out data/demo_lines
[orders]
grain = "line"

[orders.columns]
order_id = "invoice"
member_id = "customer"
ordered_at = "time"
quantity = "qty"
unit_price = "price"
product_id = "sku"
category = "category"
coupon_id = "coupon"

[orders.cancel]
order_id_prefix = "C"

[orders.exclude]
product_id = ["POST"]
"""


def write_line_items(orders: pd.DataFrame, folder: Path, seed: int) -> Path:
    """Write `orders` (the contract's orders table) as `folder/orders_lines.csv` with its mapping."""
    rng = np.random.default_rng(seed)
    lines = _lines(orders, rng)
    cancels = _cancellations(orders, lines)
    extra = _guests_and_postage(orders, rng)
    table = pd.concat([lines, cancels, extra], ignore_index=True).sort_values(["time", "invoice"], kind="stable")
    table["time"] = table["time"].dt.strftime("%Y-%m-%dT%H:%M:%S+08:00")
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / FILE, index=False, float_format="%.12g")
    (folder / MAPPING).write_text(MAPPING_TEXT.format(folder=folder), encoding="utf-8")
    return folder / FILE


def _lines(orders: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    items = orders[c.QUANTITY].to_numpy(dtype=int)
    count = np.minimum(items, rng.integers(1, 4, len(orders)))  # lines per order, at most its items
    order = np.repeat(np.arange(len(orders)), count)
    position = np.arange(len(order)) - np.repeat(np.cumsum(count) - count, count)  # 0 for an order's first line
    # quantities: one item per line, the rest on the first line
    quantity = np.where(position == 0, items[order] - count[order] + 1, 1)
    # shares of the amount: the first line over half, the rest split evenly
    first = 0.55 + 0.45 * rng.random(len(orders))
    share = np.where(position == 0, first[order], (1 - first[order]) / np.maximum(count[order] - 1, 1))
    share = np.where(count[order] == 1, 1.0, share)
    amount = orders[c.AMOUNT].to_numpy()[order] * share
    own = orders[c.CATEGORY].to_numpy()[order]
    other = np.asarray(CATEGORIES, dtype=object)[rng.integers(0, len(CATEGORIES), len(order))]
    return pd.DataFrame(
        {
            "invoice": orders[c.ORDER_ID].to_numpy()[order],
            # one product per line and order: a cancellation then matches exactly the order it cancels
            "sku": [f"SKU-{o}-{p}" for o, p in zip(orders[c.ORDER_ID].to_numpy()[order], position, strict=True)],
            "qty": quantity,
            "time": orders[c.ORDERED_AT].to_numpy()[order],
            "price": amount / quantity,
            "customer": orders[c.MEMBER_ID].to_numpy()[order],
            "category": np.where(position == 0, own, other),
            "coupon": np.where(position == 0, orders[c.COUPON_ID].to_numpy()[order], None),
        }
    )


def _cancellations(orders: pd.DataFrame, lines: pd.DataFrame) -> pd.DataFrame:
    """One cancellation row per line of each refunded order, at its refund time."""
    refunded = orders.loc[orders[c.STATUS] == c.REFUNDED, [c.ORDER_ID, c.REFUNDED_AT]]
    hit = lines.merge(refunded, left_on="invoice", right_on=c.ORDER_ID)
    return hit.assign(invoice="C" + hit["invoice"], qty=-hit["qty"], time=hit[c.REFUNDED_AT], coupon=None)[
        lines.columns
    ]


def _guests_and_postage(orders: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    guests = orders.sample(frac=GUEST_SHARE, random_state=int(rng.integers(2**31)))
    postage = orders.sample(frac=POSTAGE_SHARE, random_state=int(rng.integers(2**31)))
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "invoice": "G" + guests[c.ORDER_ID],
                    "sku": "SKU-guest",
                    "qty": 1,
                    "time": guests[c.ORDERED_AT],
                    "price": guests[c.AMOUNT],
                    "customer": None,
                    "category": guests[c.CATEGORY],
                }
            ),
            pd.DataFrame(
                {
                    "invoice": postage[c.ORDER_ID],
                    "sku": "POST",
                    "qty": 1,
                    "time": postage[c.ORDERED_AT],
                    "price": 8.0,
                    "customer": postage[c.MEMBER_ID],
                    "category": "",
                }
            ),
        ],
        ignore_index=True,
    )
