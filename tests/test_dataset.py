"""The dataset on disk: every table in member buckets (Hive-style folders), read the same as the layout
before buckets, and rewritten from it by `retain rebucket`."""

import json

import pandas as pd
import pyarrow.parquet as pq

from retain import contract as c
from retain import features
from retain.dataset import BUCKET, member_buckets, open_dataset, rebucket


def test_every_row_lands_in_exactly_one_bucket_its_members(small_shop):
    n = small_shop.buckets
    assert n == 64
    for table in ("orders", "events", "offers", "members"):
        paths = small_shop.files(table)
        total = 0
        for path in paths:
            k = int(path.parent.name.removeprefix(f"{BUCKET}="))
            ids = pq.read_table(path, columns=[c.MEMBER_ID]).column(c.MEMBER_ID).to_numpy(zero_copy_only=False)
            assert (member_buckets(ids, n) == k).all(), path  # every row in its member's bucket
            total += len(ids)
        assert total == small_shop.metadata["rows"][table] == len(small_shop.read(table))  # each row once
    # a member's rows of every table are in the same bucket: one bucket of each table is all of them
    orders = small_shop.read("orders")
    member = orders[c.MEMBER_ID].iloc[0]
    (k,) = member_buckets([member], n)
    in_bucket = pd.concat(pd.read_parquet(p) for p in small_shop.bucket_files("orders", [int(k)]))
    assert (in_bucket[c.MEMBER_ID] == member).sum() == (orders[c.MEMBER_ID] == member).sum() > 0


def test_the_layout_before_buckets_is_read_the_same_and_rebucketed(small_shop, tmp_path, config):
    old = tmp_path / "old"
    old.mkdir()
    for table in c.TABLES:  # one shuffled file per table, as datasets were written before buckets
        if small_shop.has(table):
            small_shop.read(table).sample(frac=1.0, random_state=1).to_parquet(old / f"{table}.parquet", index=False)
    (old / "truth.parquet").write_bytes((small_shop.path / "truth.parquet").read_bytes())
    metadata = {k: v for k, v in small_shop.metadata.items() if k != "buckets"}
    (old / "dataset.json").write_text(json.dumps(metadata))
    before = open_dataset(old)
    assert before.buckets is None and before.has("orders")
    as_of = pd.Timestamp("2024-10-01")
    expected = features.build(small_shop, as_of, config.data)
    pd.testing.assert_frame_equal(features.build(before, as_of, config.data), expected, rtol=1e-12)

    written = rebucket(before, 8)
    after = open_dataset(old)
    assert after.buckets == written["buckets"] == 8 and not (old / "orders.parquet").exists()
    assert written["rows"] == small_shop.metadata["rows"] and (old / "truth.parquet").exists()
    assert len(after.files("orders")) == 8
    pd.testing.assert_frame_equal(features.build(after, as_of, config.data), expected, rtol=1e-12)
