import numpy as np
import pandas as pd
import pytest

from retain import contract as c
from retain import labels
from retain.dataset import open_dataset
from retain.simulate import oracle_probabilities, simulate_bgnbd, simulate_shop


def test_the_same_seed_gives_the_same_dataset(tmp_path):
    a = simulate_shop(tmp_path / "a", members=500, days=120, seed=3)
    b = simulate_shop(tmp_path / "b", members=500, days=120, seed=3)
    c_ = simulate_shop(tmp_path / "c", members=500, days=120, seed=4)
    assert a["fingerprint"] == b["fingerprint"] != c_["fingerprint"]


def test_every_table_satisfies_the_contract(small_shop):
    for table in c.TABLES:
        assert small_shop.has(table)
        c.schema(table).validate(small_shop.read(table))
    assert small_shop.observed_until == pd.Timestamp("2024-01-01") + pd.Timedelta(days=400)


def test_the_shop_looks_like_a_flagship_store(small_shop):
    orders, events = small_shop.read("orders"), small_shop.read("events")
    assert 2.5 < len(events) / len(orders) < 3.5  # about three browsing events per order
    assert set(orders[c.CATEGORY]) == {"家电3C", "美妆个护", "服饰鞋包", "食品", "母婴", "家居智能", "健康器械"}
    assert 0.02 < (orders[c.STATUS] == c.REFUNDED).mean() < 0.08
    daily = orders.groupby(orders[c.ORDERED_AT].dt.normalize()).size()
    assert daily.loc["2024-11-11"] > 2 * daily.loc["2024-10-01":"2024-10-31"].mean()  # Double 11
    assert daily.loc["2024-06-18"] > 2 * daily.loc["2024-05-01":"2024-05-31"].mean()  # 618
    offers = small_shop.read("offers")
    assert 0.1 < (~offers[c.TREATED]).mean() < 0.3  # a held-out control group
    assert offers.loc[~offers[c.TREATED], c.REDEEMED_AT].isna().all()


def test_disengaging_members_browse_less_before_they_stop(small_shop):
    truth = pd.read_parquet(small_shop.path / "truth.parquet")
    events = small_shop.read("events")
    start = pd.Timestamp("2024-01-01")
    day = (events[c.EVENT_AT] - start).dt.days
    events = events.assign(day=day).merge(truth[[c.MEMBER_ID, "disengaged_day", "died_day"]], on=c.MEMBER_ID)
    stopped = events[(events["disengaged_day"] > 60) & (events["died_day"] > 0)]
    before = stopped[(stopped["day"] < stopped["disengaged_day"]) & (stopped["day"] >= stopped["disengaged_day"] - 60)]
    during = stopped[(stopped["day"] >= stopped["disengaged_day"]) & (stopped["day"] < stopped["died_day"])]
    days_during = (stopped.drop_duplicates(c.MEMBER_ID).eval("died_day - disengaged_day")).sum()
    members = stopped[c.MEMBER_ID].nunique()
    assert len(during) / days_during < 0.5 * len(before) / (60 * members)


@pytest.mark.parametrize(("as_of", "horizon"), [("2024-09-01", 90), ("2024-11-01", 30)])
def test_the_oracle_is_calibrated_against_what_happened(small_shop, as_of, horizon):
    truth = pd.read_parquet(small_shop.path / "truth.parquet")
    y = labels.build(small_shop, pd.Timestamp(as_of), "churn", horizon)
    p = oracle_probabilities(truth, pd.Timestamp(as_of), horizon)["p_churn"].loc[y.index]
    assert abs(p.mean() - y.mean()) < 0.02
    bins = pd.cut(p, [0, 0.2, 0.5, 0.8, 1.0], include_lowest=True)
    by_bin = pd.DataFrame({"p": p, "y": y}).groupby(bins, observed=True).mean()
    assert (by_bin["p"] - by_bin["y"]).abs().max() < 0.06


def test_the_bgnbd_process_writes_a_plain_order_log(tmp_path):
    meta = simulate_bgnbd(tmp_path / "b", members=2000, weeks=52, r=0.243, alpha=4.414, a=0.793, b=2.426, seed=1)
    ds = open_dataset(tmp_path / "b")
    orders = ds.read("orders")
    assert orders[c.MEMBER_ID].nunique() == 2000  # everyone makes a first purchase
    assert orders[c.ORDERED_AT].max() < ds.observed_until
    truth = pd.read_parquet(tmp_path / "b" / "truth.parquet")
    assert truth["purchase_rate_weekly"].mean() == pytest.approx(0.243 / 4.414, rel=0.15)
    assert meta["simulator"]["params"] == {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    repeat = orders.groupby(c.MEMBER_ID).size() - 1
    assert 0.5 < repeat.mean() < 3 and np.isfinite(orders[c.AMOUNT]).all()


def test_each_offer_records_the_stage_it_found_the_member_in(small_shop):
    """A campaign's truth starts from the stage its members were in when it was sent (the truth file's
    disengaged_day keeps only the last disengagement, which a win-back undoes)."""
    from retain.simulate.oracle import offer_stage

    truth = pd.read_parquet(small_shop.path / "truth.parquet")
    offers = small_shop.read("offers")
    day = offers["sent_at"].dt.normalize().max()
    stage = offer_stage(truth, day)
    assert set(stage.index) == set(offers.loc[offers["sent_at"].dt.normalize() == day, c.MEMBER_ID])
    assert set(stage.unique()) <= {1, 2, 3} and (stage == 3).any() and (stage == 1).any()
    started = oracle_probabilities(truth, day + pd.Timedelta(days=1), 30, stages=stage)
    dead = stage.index[stage == 3]
    assert (started.loc[dead, "expected_orders"] == 0).all() and (started.loc[dead, "p_churn"] == 1).all()
    alive = stage.index[stage == 1]
    assert (started.loc[alive, "expected_orders"] > 0).all()


def test_a_custom_process_is_the_one_the_tables_follow(tmp_path):
    """The refund share comes from the process passed in (the oracle's), not the module's default."""
    import dataclasses

    from retain.simulate.process import PROCESS

    refunded = {}
    for share in (0.0, 0.5):
        out = tmp_path / str(share)
        simulate_shop(out, 400, 200, seed=2, process=dataclasses.replace(PROCESS, refund_share=share))
        refunded[share] = (open_dataset(out).read("orders")["status"] == "refunded").mean()
    assert refunded[0.0] == 0.0 and refunded[0.5] > 0.2  # of ordinary orders (renewals are not refunded)


def test_the_simulated_shop_follows_the_configured_promotion_calendar(tmp_path):
    """One calendar: a shop whose only promotion is 03-01..03-10 sells more then, and nothing special on 618."""
    import dataclasses

    from retain import promotions
    from retain.simulate.process import PROCESS

    march = dataclasses.replace(PROCESS, promotion_windows=(("03-01", "03-10"),))
    simulate_shop(tmp_path / "march", 1500, 365, seed=4, start=pd.Timestamp("2024-01-01"), process=march)
    days = open_dataset(tmp_path / "march").read("orders")["ordered_at"].dt.normalize().value_counts()
    around = lambda first, last: days.reindex(pd.date_range(first, last), fill_value=0).mean()  # noqa: E731
    # against the ten days before and after each window (members join over the year: compare neighbours)
    assert (
        around("2024-03-01", "2024-03-10")
        > 1.5 * (around("2024-02-20", "2024-02-29") + around("2024-03-11", "2024-03-20")) / 2
    )
    assert (
        around("2024-06-09", "2024-06-18")
        < 1.2 * (around("2024-05-30", "2024-06-08") + around("2024-06-19", "2024-06-28")) / 2
    )
    assert promotions.last_days(pd.date_range("2024-11-08", "2024-11-12"), (("11-01", "11-11"),), 3).tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize("kind", ["browsing", "disengagement"])
def test_a_regime_change_moves_the_shop_from_its_day_on_and_not_before(tmp_path, kind):
    """`--shift DAY:KIND`: the same shop up to the day (same seed, same draws); from it, half the browsing
    events recorded, or members disengaging three times as fast."""
    import dataclasses

    from retain.simulate.process import PROCESS

    shift = pd.Timestamp("2024-05-01")
    shops = {}
    for name, process in (
        ("stable", PROCESS),
        ("shifted", dataclasses.replace(PROCESS, shift_day=121, shift_kind=kind)),
    ):
        metadata = simulate_shop(tmp_path / name, 2000, 240, seed=5, start=pd.Timestamp("2024-01-01"), process=process)
        shops[name] = (open_dataset(tmp_path / name), metadata)
    assert shops["shifted"][1]["simulator"]["shift"] == {"day": 121, "kind": kind}
    orders = {name: shop.read("orders", ["ordered_at"])["ordered_at"] for name, (shop, _) in shops.items()}
    assert (orders["shifted"] < shift).sum() == (orders["stable"] < shift).sum()  # the same shop until the day
    after = {name: int((o >= shift).sum()) for name, o in orders.items()}
    if kind == "browsing":
        events = {name: shop.read("events", ["event_at"])["event_at"] for name, (shop, _) in shops.items()}
        # (events get their times and kinds after the simulation, from draws the later counts change)
        assert (events["shifted"] < shift).sum() == pytest.approx((events["stable"] < shift).sum(), rel=0.02)
        recorded = {name: int((e >= shift).sum()) for name, e in events.items()}
        assert recorded["shifted"] / recorded["stable"] == pytest.approx(0.5, abs=0.05)
        assert after["shifted"] == pytest.approx(after["stable"], rel=0.05)  # members buy as before
    else:
        dead = {
            name: (pd.read_parquet(shop.path / "truth.parquet")["died_day"] >= 0).sum()
            for name, (shop, _) in shops.items()
        }
        assert dead["shifted"] > 1.3 * dead["stable"] and after["shifted"] < 0.9 * after["stable"]
