import pandas as pd
import pytest
from conftest import make_dataset, orders_frame

from retain import features, labels
from retain.errors import RetainError


def test_label_population_is_the_feature_population(small_shop, config):
    as_of = pd.Timestamp("2024-10-01")
    x = features.build(small_shop, as_of, config.data)
    y = labels.build(small_shop, as_of, "churn", 90)
    assert y.index.equals(x.index)
    assert set(y.unique()) <= {0, 1}


def test_churn_and_repurchase_are_complements_at_the_same_horizon(small_shop):
    as_of = pd.Timestamp("2024-09-01")
    churn = labels.build(small_shop, as_of, "churn", 30)
    repurchase = labels.build(small_shop, as_of, "repurchase", 30)
    assert ((churn + repurchase) == 1).all()


def test_a_refunded_window_order_is_not_a_purchase(tmp_path):
    orders = orders_frame([("a", "2025-01-01", 10), ("a", "2025-02-10", 10, "食品", "refunded", "2025-02-12")])
    ds = make_dataset(tmp_path, {"orders": orders}, "2025-06-01")
    assert labels.build(ds, pd.Timestamp("2025-02-01"), "churn", 30).to_dict() == {"a": 1}


def test_a_window_past_the_observed_period_is_an_error(tmp_path):
    ds = make_dataset(tmp_path, {"orders": orders_frame([("a", "2025-01-01", 10)])}, "2025-03-01")
    labels.build(ds, pd.Timestamp("2025-01-30"), "churn", 30)  # ends exactly at observed_until: fine
    with pytest.raises(RetainError, match="after the data's observed period ends"):
        labels.build(ds, pd.Timestamp("2025-02-01"), "churn", 30)
    with pytest.raises(RetainError, match="Unknown task"):
        labels.build(ds, pd.Timestamp("2025-01-01"), "lapse", 30)
