import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset, orders_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retain import contract as c
from retain import features
from retain.dataset import open_dataset, write_dataset
from retain.simulate import simulate_shop

AS_OF = pd.Timestamp("2025-02-01")


def test_core_features_of_a_tiny_log(tmp_path, config):
    orders = orders_frame(
        [
            ("a", "2025-01-01", 100),
            ("a", "2025-01-11", 50),
            ("a", "2025-01-31", 30),
            ("b", "2025-01-20", 80, "食品", "refunded", "2025-01-25"),  # refunded before as_of: not a purchase
            ("c", "2025-01-15", 20),
            ("c", "2025-02-01", 99),  # the second is at as_of: not seen
        ]
    )
    ds = make_dataset(tmp_path, {"orders": orders}, "2025-03-01")
    got = features.build(ds, AS_OF, config.data)
    expected = pd.DataFrame(
        {
            "recency_days": [1.0, 17.0],
            "frequency": [3, 1],
            "order_count": [3, 1],
            "monetary_total": [180.0, 20.0],
            "monetary_mean": [60.0, 20.0],
            "tenure_days": [31.0, 17.0],
            "mean_gap_days": [15.0, np.nan],
        },
        index=pd.Index(["a", "c"], name="member_id"),
    )
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False, check_index_type=False)
    assert got.loc["a", "gap_std_days"] == pytest.approx(np.std([10, 20], ddof=1))
    assert got.loc["a", "overdue_ratio"] == pytest.approx(1 / 15)
    assert got.loc["a", "orders_30d"] == 2 and got.loc["a", "orders_90d"] == 3


def test_a_refund_recorded_at_or_after_as_of_is_not_yet_known(tmp_path, config):
    orders = orders_frame(
        [
            ("a", "2025-01-10", 50, "食品", "refunded", "2025-02-01"),
            ("a", "2025-01-20", 50, "食品", "refunded", "2025-01-25"),
        ]
    )
    ds = make_dataset(tmp_path, {"orders": orders}, "2025-03-01")
    got = features.build(ds, AS_OF, config.data)
    assert got.loc["a", "order_count"] == 1  # the first still reads as paid at as_of
    assert got.loc["a", "refund_share"] == 0.5


def test_category_mix_and_replenishment_cycles(tmp_path, config):
    orders = orders_frame(
        [("a", f"2024-{m:02d}-05", 30, "母婴") for m in range(1, 13)] + [("a", "2024-12-20", 300, "家电3C")]
    )
    ds = make_dataset(tmp_path, {"orders": orders}, "2025-03-01")
    got = features.build(ds, pd.Timestamp("2025-01-01"), config.data).loc["a"]
    assert got["cat_share_baby"] == pytest.approx(12 / 13) and got["cat_share_electronics"] == pytest.approx(1 / 13)
    assert got["n_categories"] == 2
    assert 29 < got["cycle_days_baby"] < 32 and got["cycle_cv_baby"] < 0.05
    assert got["best_cycle_cv"] == got["cycle_cv_baby"]
    assert np.isnan(got["cycle_days_food"])


def test_absent_tables_mean_absent_features_not_zeros(tmp_path, config):
    ds = make_dataset(tmp_path, {"orders": orders_frame([("a", "2025-01-01", 10)])}, "2025-03-01")
    got = features.build(ds, AS_OF, config.data)
    for column in ("views_30d", "offers_received", "active_subscriptions", "tier_level"):
        assert column not in got


def test_side_tables_are_point_in_time(tmp_path, config):
    orders = orders_frame([("a", "2025-01-01", 10), ("b", "2025-01-02", 10)])
    ts = lambda s: pd.Timestamp(s)  # noqa: E731
    offers = pd.DataFrame(
        {
            "offer_id": ["x1", "x2"],
            "member_id": ["a", "a"],
            "sent_at": [ts("2025-01-10"), ts("2025-01-20")],
            "offer_type": ["winback_coupon"] * 2,
            "treated": [True, True],
            "value": [10.0, 30.0],
            "redeemed_at": [ts("2025-01-12"), ts("2025-02-01")],
        }
    )
    subscriptions = pd.DataFrame(
        {
            "member_id": ["a", "b"],
            "category": ["母婴", "食品"],
            "started_at": [ts("2024-12-01"), ts("2024-12-01")],
            "ended_at": [ts("2025-02-01"), ts("2025-01-15")],
        }
    )
    for frame, cols in ((offers, ["sent_at", "redeemed_at"]), (subscriptions, ["started_at", "ended_at"])):
        frame[cols] = frame[cols].astype("datetime64[us]")
    ds = make_dataset(tmp_path, {"orders": orders, "offers": offers, "subscriptions": subscriptions}, "2025-03-01")
    got = features.build(ds, AS_OF, config.data)
    assert got.loc["a", "offers_received"] == 2 and got.loc["a", "offers_redeemed"] == 1
    assert got.loc["a", "active_subscriptions"] == 1  # ends at as_of: still active
    assert got.loc["b", "active_subscriptions"] == 0 and got.loc["b", "offers_received"] == 0


# --- the point-in-time rule, as a property --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("pit") / "shop"
    simulate_shop(out, members=300, days=240, seed=5)
    ds = open_dataset(out)
    tables = {t: ds.read(t) for t in c.TABLES if ds.has(t)}
    return ds, tables


LATE_COLUMNS = {"orders": [c.REFUNDED_AT], "offers": [c.REDEEMED_AT], "subscriptions": [c.ENDED_AT]}


def mutate_future(tables, as_of, rng):
    """Change, add and delete rows dated at or after as_of, and move late dates (refund, redemption, end)
    that fall at or after as_of to other dates at or after it."""
    out = {}
    for table, frame in tables.items():
        frame = frame.copy()
        if table in c.TIME_COLUMN:
            at = c.TIME_COLUMN[table]
            future = frame.index[frame[at] >= as_of]
            drop = rng.choice(future, size=len(future) // 3, replace=False) if len(future) else []
            frame = frame.drop(index=drop)
            extra = frame.sample(n=min(20, len(frame)), random_state=int(rng.integers(1 << 31))).copy()
            extra[at] = as_of + pd.to_timedelta(rng.integers(0, 86_400 * 30, len(extra)), unit="s")
            if c.ORDER_ID in extra:
                extra[c.ORDER_ID] = [f"new{i}" for i in range(len(extra))]
                extra[c.AMOUNT] = rng.uniform(1, 999, len(extra)).round(2)
            if c.OFFER_ID in extra:
                extra[c.OFFER_ID] = [f"newo{i}" for i in range(len(extra))]
            frame = pd.concat([frame, extra], ignore_index=True)
        for late in LATE_COLUMNS.get(table, []):
            is_late = frame[late] >= as_of
            shifted = as_of + pd.to_timedelta(rng.integers(0, 86_400 * 60, len(frame)), unit="s")
            frame.loc[is_late, late] = shifted[is_late.to_numpy()]
            if late != c.REFUNDED_AT:  # a late redemption or end may also not have happened at all
                frame.loc[is_late & (rng.random(len(frame)) < 0.5), late] = pd.NaT
        if table == "orders":
            late_refund = frame[c.REFUNDED_AT] >= as_of
            frame.loc[late_refund & (rng.random(len(frame)) < 0.5), c.STATUS] = c.PAID
            frame.loc[late_refund & (frame[c.STATUS] == c.PAID), c.REFUNDED_AT] = pd.NaT
        for col in frame.columns:
            if str(tables[table][col].dtype).startswith("datetime64"):
                frame[col] = frame[col].astype("datetime64[us]")
        out[table] = frame
    return out


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), day=st.integers(60, 200))
def test_rows_at_or_after_as_of_never_change_the_features(tiny_shop, tmp_path, config, seed, day):
    ds, tables = tiny_shop
    as_of = pd.Timestamp("2024-01-01") + pd.Timedelta(days=day)
    before = features.build(ds, as_of, config.data)
    changed = mutate_future(tables, as_of, np.random.default_rng(seed))
    folder = tmp_path / f"m{seed}-{day}"
    write_dataset(folder, changed, ds.observed_until + pd.Timedelta(days=60), "CNY")
    after = features.build(open_dataset(folder), as_of, config.data)
    pd.testing.assert_frame_equal(before, after)


def test_a_row_exactly_at_as_of_belongs_to_the_label_window(tmp_path, config):
    from retain import labels

    orders = orders_frame(
        [("a", "2025-01-01", 10), ("a", AS_OF, 10), ("b", "2025-01-01", 10), ("b", AS_OF + pd.Timedelta(days=30), 10)]
    )
    ds = make_dataset(tmp_path, {"orders": orders}, "2025-06-01")
    got = features.build(ds, AS_OF, config.data)
    assert got.loc["a", "order_count"] == 1 and got.loc["a", "recency_days"] == 31.0
    churn = labels.build(ds, AS_OF, "churn", 30)
    assert churn.to_dict() == {"a": 0, "b": 1}  # b's order is at as_of + 30 days: outside the window
    assert labels.build(ds, AS_OF, "repurchase", 30).to_dict() == {"a": 1, "b": 0}


def test_an_undated_refund_counts_from_its_order_date_plus_the_refund_delay(tmp_path, config):
    orders = orders_frame(
        [
            ("a", "2025-01-05", 50, "食品", "refunded", None),  # no refunded_at: known from 2025-01-19
            ("a", "2025-01-25", 50, "食品", "refunded", None),  # known only from 2025-02-08, after as_of
            ("a", "2025-01-26", 50),
        ]
    )
    ds = make_dataset(tmp_path, {"orders": orders}, "2025-03-01")
    got = features.build(ds, AS_OF, config.data)  # data.refund_delay_days = 14
    assert got.loc["a", "refund_share"] == pytest.approx(1 / 3)  # the first only: the second is the future
    assert got.loc["a", "frequency"] == 2


def test_a_tier_counts_only_where_it_was_held_before_as_of(tmp_path, config):
    orders = orders_frame([(m, "2025-01-10", 10) for m in ("a", "b", "c")])
    members = pd.DataFrame(
        {
            "member_id": ["a", "b", "c"],
            "joined_at": pd.to_datetime(["2024-01-01"] * 3).astype("datetime64[us]"),
            "tier": ["gold", "gold", "gold"],
            "tier_since": pd.to_datetime(["2024-06-01", "2025-03-01", None]).astype("datetime64[us]"),
        }
    )
    ds = make_dataset(tmp_path, {"orders": orders, "members": members}, "2025-04-01")
    tiers = features.build(ds, AS_OF, config.data)["tier_level"]
    assert tiers["a"] == 3 and np.isnan(tiers["b"]) and np.isnan(tiers["c"])  # b's gold is the future
