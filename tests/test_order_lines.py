"""Orders as shops export them (issue 16): line items grouped into orders, cancellations matched to what
they cancel, guests apart from bad rows, non-product lines excluded, time zones, and a report whose
counts add up to the rows read."""

import pandas as pd
import pytest

from retain import contract as c
from retain.dataset import open_dataset
from retain.errors import RetainError
from retain.ingest import IngestRejected, ingest, load_mapping

LINES = "Invoice,StockCode,Quantity,InvoiceDate,Price,Customer ID\n"
MAPPING = """
[orders]
grain = "line"

[orders.columns]
order_id = "Invoice"
product_id = "StockCode"
quantity = "Quantity"
ordered_at = "InvoiceDate"
unit_price = "Price"
member_id = "Customer ID"

[orders.cancel]
order_id_prefix = "C"
negative_quantity = true

[orders.exclude]
product_id = ["POST", "BANK CHARGES", "ADJUST*"]
"""


def run(tmp_path, rows, mapping=MAPPING, **options):
    source = tmp_path / "lines.csv"
    source.write_text(LINES + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    (tmp_path / "mapping.toml").write_text(mapping, encoding="utf-8")
    out = tmp_path / "out"
    report = ingest({"orders": source}, out, tmp_path / "mapping.toml", currency="GBP", **options)
    orders = open_dataset(out).read("orders").set_index("order_id")
    quarantine = out / "quarantine" / "orders.parquet"
    return report["tables"]["orders"], orders, pd.read_parquet(quarantine) if quarantine.exists() else None


def test_lines_are_grouped_into_orders_with_amount_items_products_and_the_largest_lines_category(tmp_path):
    mapping = MAPPING.replace('member_id = "Customer ID"', 'member_id = "Customer ID"\ncategory = "StockCode"')
    counts, orders, _ = run(
        tmp_path,
        [
            "100,A,2,2011-01-05 10:00:00,3.50,m1",  # 7.00
            "100,B,1,2011-01-05 10:00:00,12.00,m1",  # 12.00: the largest line
            "100,A,3,2011-01-05 10:00:00,3.50,m1",  # the same product again: 10.50
            "101,A,1,2011-02-01 09:00:00,3.50,m2",
        ],
        mapping,
    )
    assert orders.loc["100", "amount"] == pytest.approx(2 * 3.5 + 12.0 + 3 * 3.5)
    assert orders.loc["100", "quantity"] == 6 and orders.loc["100", "products"] == 2
    assert orders.loc["100", "category"] == "B"  # the order's category: its largest line's
    assert orders.loc["100", "member_id"] == "m1" and orders.loc["101", "amount"] == pytest.approx(3.5)
    assert counts["rows_kept"] == 4 and counts["orders_written"] == 2


def test_a_cancellation_refunds_the_order_it_cancels_in_full_or_in_part(tmp_path):
    counts, orders, quarantine = run(
        tmp_path,
        [
            "200,A,2,2011-01-05 10:00:00,5.00,m1",
            "200,B,1,2011-01-05 10:00:00,10.00,m1",
            "C900,B,-1,2011-01-09 12:00:00,10.00,m1",  # part of 200: its B line, 10.00
            "201,A,4,2011-01-06 10:00:00,5.00,m2",
            "C901,A,-4,2011-01-20 08:00:00,5.00,m2",  # all of 201
            "C902,Z,-1,2011-01-20 08:00:00,9.00,m2",  # m2 never bought Z: unmatched
            "C903,A,-1,2011-01-01 08:00:00,5.00,m1",  # before m1 bought A: unmatched
        ],
    )
    assert orders.loc["200", "amount"] == pytest.approx(10.0) and orders.loc["200", "status"] == c.PAID
    assert pd.isna(orders.loc["200", "refunded_at"])
    assert orders.loc["201", "status"] == c.REFUNDED and orders.loc["201", "amount"] == pytest.approx(20.0)
    assert orders.loc["201", "refunded_at"] == pd.Timestamp("2011-01-20 08:00:00")
    assert counts["cancellations_matched"] == 2 and counts["cancellations_unmatched"] == 2
    # unmatched cancellations are kept with their reason, and are not bad rows
    assert counts["rows_quarantined"] == 0 and counts["quarantined_by_reason"] == {}
    assert quarantine[c.QUARANTINE_REASON].tolist() == [c.UNMATCHED_CANCELLATION] * 2
    assert quarantine["Invoice"].tolist() == ["C902", "C903"]


def test_guests_are_counted_with_their_revenue_share_and_are_not_bad_rows(tmp_path):
    guests = [f"3{i:02d},A,1,2011-01-05 10:00:00,10.00," for i in range(40)]  # 40 guest orders: 400.00
    members = [f"4{i:02d},A,1,2011-01-05 10:00:00,15.00,m{i}" for i in range(40)]  # 600.00
    counts, orders, _ = run(tmp_path, guests + members)  # 50% of the rows: far above max_bad_share
    assert counts["guest"] == 40 and counts["guest_revenue_share"] == pytest.approx(0.4)
    assert counts["rows_quarantined"] == 0 and len(orders) == 40
    assert orders["member_id"].notna().all()


def test_non_product_lines_are_excluded_by_pattern_and_counted(tmp_path):
    counts, orders, _ = run(
        tmp_path,
        [
            "500,A,1,2011-01-05 10:00:00,10.00,m1",
            "500,POST,1,2011-01-05 10:00:00,18.00,m1",  # postage: not a purchase
            "501,BANK CHARGES,1,2011-01-06 10:00:00,15.00,m1",  # an order of nothing but a fee
            "502,ADJUST2,1,2011-01-07 10:00:00,-40.00,m1",  # a pattern; its negative price is not a bad row
        ],
    )
    assert counts["excluded"] == 3 and counts["rows_quarantined"] == 0
    assert orders.index.tolist() == ["500"] and orders.loc["500", "amount"] == pytest.approx(10.0)


def test_the_report_accounts_for_every_row_read(tmp_path):
    counts, _, quarantine = run(
        tmp_path,
        [
            "600,A,2,2011-01-05 10:00:00,5.00,m1",  # kept
            "601,A,1,2011-01-05 10:00:00,5.00,",  # guest
            "602,POST,1,2011-01-05 10:00:00,5.00,m1",  # excluded
            "C603,A,-1,2011-01-08 10:00:00,5.00,m1",  # cancellation, matched
            "C604,Q,-1,2011-01-08 10:00:00,5.00,m1",  # cancellation, unmatched
            "605,A,1,2011-13-45 10:00:00,5.00,m1",  # bad date
            "606,A,two,2011-01-05 10:00:00,5.00,m1",  # bad number
        ],
        max_bad_share=0.5,
    )
    parts = ("rows_kept", "guest", "excluded", "cancellations_matched", "cancellations_unmatched", "rows_quarantined")
    assert [counts[p] for p in parts] == [1, 1, 1, 1, 1, 2]
    assert sum(counts[p] for p in parts) == counts["rows_read"] == 7
    assert counts["quarantined_by_reason"] == {c.BAD_AMOUNT: 1, c.BAD_DATE: 1}
    assert len(quarantine) == 3  # the two bad rows and the unmatched cancellation


def test_bad_lines_still_count_against_the_limit(tmp_path):
    rows = ["700,A,1,2011-01-05 10:00:00,5.00,m1"] + [f"7{i:02d},A,1,not a date,5.00,m1" for i in range(10, 20)]
    with pytest.raises(IngestRejected, match="bad"):
        run(tmp_path, rows)


def test_one_order_id_under_two_members_is_quarantined_not_merged(tmp_path):
    counts, orders, _ = run(
        tmp_path,
        ["800,A,1,2011-01-05 10:00:00,5.00,m1", "800,B,1,2011-01-05 10:00:00,5.00,m2", "801,A,1,2011-01-05,5.00,m3"],
        max_bad_share=0.9,
    )
    assert counts["quarantined_by_reason"] == {c.ORDER_MEMBER_CONFLICT: 2} and orders.index.tolist() == ["801"]


def test_without_products_a_cancellation_matches_its_own_order_id(tmp_path):
    mapping = MAPPING.replace('product_id = "StockCode"\n', "")
    mapping = mapping.replace('product_id = ["POST", "BANK CHARGES", "ADJUST*"]', "")
    counts, orders, _ = run(
        tmp_path,
        [
            "900,A,2,2011-01-05 10:00:00,5.00,m1",
            "C900,A,-1,2011-01-07 10:00:00,5.00,m1",  # its own order, 900
            "C999,A,-1,2011-01-07 10:00:00,5.00,m1",  # no order 999
        ],
        mapping,
    )
    assert orders.loc["900", "amount"] == pytest.approx(5.0)
    assert counts["cancellations_matched"] == 1 and counts["cancellations_unmatched"] == 1


def test_an_order_grain_file_reads_a_status_value_as_refunded_and_guests_apart(tmp_path):
    source = tmp_path / "orders.csv"
    source.write_text(
        "name,customer,created,total,financial_status\n"
        "#1,c1,2025-03-01 10:00,99.0,paid\n#2,c1,2025-03-04 10:00,50.0,refunded\n"
        "#3,,2025-03-05 10:00,20.0,paid\n#4,c2,2025-03-05 10:00,10.0,partially_paid\n",
        encoding="utf-8",
    )
    (tmp_path / "m.toml").write_text(
        '[orders.columns]\norder_id = "name"\nmember_id = "customer"\nordered_at = "created"\namount = "total"\n'
        'status = "financial_status"\n\n[orders.cancel]\nstatus_values = ["refunded", "voided"]\n',
        encoding="utf-8",
    )
    report = ingest({"orders": source}, tmp_path / "out", tmp_path / "m.toml")["tables"]["orders"]
    orders = open_dataset(tmp_path / "out").read("orders").set_index("order_id")
    assert orders["status"].to_dict() == {"#1": c.PAID, "#2": c.REFUNDED, "#4": c.PAID}
    assert report["guest"] == 1 and report["rows_kept"] == 3


def test_a_mapping_with_cancellation_rows_needs_the_line_grain(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[orders.cancel]\norder_id_prefix = "C"\n', encoding="utf-8")
    with pytest.raises(RetainError, match='grain = "line"'):
        load_mapping(path)
    path.write_text('[orders]\ngrain = "lines"\n', encoding="utf-8")
    with pytest.raises(RetainError, match="grain"):
        load_mapping(path)


def test_timestamps_with_offsets_are_converted_to_the_shop_zone_and_bad_ones_quarantined(tmp_path):
    source = tmp_path / "orders.csv"
    source.write_text(
        "order_id,member_id,ordered_at,amount\n"
        "o1,m1,2025-03-01T10:00:00+08:00,10\n"  # Shanghai time already
        "o2,m1,2025-03-01T02:00:00Z,10\n"  # 10:00 in Shanghai
        "o3,m2,2025-03-01T03:00:00+01:00,10\n"  # 10:00 in Shanghai
        "o4,m2,2025-03-01 10:00:00,10\n"  # no offset: shop time as written
        "o5,m3,2025-03-01T10:00:00+25:00,10\n",  # not an offset that exists
        encoding="utf-8",
    )
    report = ingest({"orders": source}, tmp_path / "out", max_bad_share=0.5, timezone="Asia/Shanghai")
    orders = open_dataset(tmp_path / "out").read("orders").set_index("order_id")
    assert (orders["ordered_at"] == pd.Timestamp("2025-03-01 10:00:00")).all() and len(orders) == 4
    assert report["tables"]["orders"]["quarantined_by_reason"] == {c.BAD_DATE: 1}
    london = ingest({"orders": source}, tmp_path / "uk", max_bad_share=0.5, timezone="Europe/London")
    uk = open_dataset(tmp_path / "uk").read("orders").set_index("order_id")
    assert uk.loc["o2", "ordered_at"] == pd.Timestamp("2025-03-01 02:00:00")  # GMT in March
    assert london["tables"]["orders"]["rows_kept"] == 4
    assert '"timezone": "Europe/London"' in (tmp_path / "uk" / "dataset.json").read_text()


@pytest.mark.slow
def test_the_simulated_shop_as_line_items_ingests_back_to_the_same_orders_and_features(small_shop, tmp_path, config):
    from conftest import make_dataset

    from retain import features
    from retain.simulate.lines import write_line_items

    orders = small_shop.read("orders")
    source = write_line_items(orders, tmp_path / "lines", seed=3)
    report = ingest(
        {"orders": source},
        tmp_path / "from_lines",
        source.with_name("mapping.toml"),
        as_of=small_shop.observed_until,
        timezone="Asia/Shanghai",
    )["tables"]["orders"]
    assert report["rows_quarantined"] == 0 and report["cancellations_unmatched"] == 0
    assert report["cancellations_matched"] > 0 and report["guest"] > 0 and report["excluded"] > 0
    assert report["orders_written"] == len(orders)

    back = open_dataset(tmp_path / "from_lines").read("orders").set_index("order_id").loc[orders["order_id"]]
    original = orders.set_index("order_id")
    for column in ("member_id", "ordered_at", "category", "status", "refunded_at", "coupon_id"):
        pd.testing.assert_series_equal(back[column], original[column], check_dtype=False, check_names=False)
    pd.testing.assert_series_equal(back["amount"], original["amount"], rtol=1e-9, check_names=False)
    assert (back["quantity"].to_numpy() == original["quantity"].to_numpy()).all()

    as_of = small_shop.observed_until
    from_lines = make_dataset(tmp_path, {"orders": back.reset_index()}, str(as_of), "lines_ds")
    from_orders = make_dataset(tmp_path, {"orders": orders}, str(as_of), "orders_ds")
    built = [features.build(ds, as_of, config.data) for ds in (from_lines, from_orders)]
    pd.testing.assert_frame_equal(built[0], built[1], rtol=1e-9)
