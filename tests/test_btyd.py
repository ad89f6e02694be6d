import numpy as np
import pandas as pd
import pytest
from conftest import CDNOW_SAMPLE, ROOT

from retain import btyd, features
from retain.dataset import open_dataset
from retain.ingest import ingest
from retain.simulate import simulate_bgnbd

PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # Fader, Hardie & Lee (2005), CDNOW 1/10 sample


@pytest.fixture(scope="module")
def cdnow_sample_summary(tmp_path_factory, config):
    out = tmp_path_factory.mktemp("cdnow") / "sample"
    ingest({"orders": CDNOW_SAMPLE}, out, ROOT / "examples" / "cdnow_sample_mapping.toml", currency="USD")
    return btyd.summary_from_features(features.build(open_dataset(out), pd.Timestamp("1997-10-01"), config.data))


def test_bgnbd_reaches_the_published_cdnow_fit_within_one_percent(cdnow_sample_summary):
    assert len(cdnow_sample_summary) == 2357
    model = btyd.fit_bgnbd(cdnow_sample_summary)
    for name, published in PUBLISHED.items():
        assert model.params[name] == pytest.approx(published, rel=0.01), name
    assert model.log_likelihood == pytest.approx(-9582.4, abs=0.5)  # the paper's value


def test_the_summary_measures_t_to_the_last_day_before_as_of(tmp_path, config):
    from conftest import make_dataset, orders_frame

    orders = orders_frame([("a", "1997-01-01 09:00", 10), ("a", "1997-01-08 18:00", 10), ("a", "1997-01-08 20:00", 5)])
    ds = make_dataset(tmp_path, {"orders": orders}, "1997-03-01")
    s = btyd.summary_from_features(features.build(ds, pd.Timestamp("1997-01-15"), config.data)).loc["a"]
    assert s["x"] == 1  # two distinct purchase days
    assert s["t_x"] == pytest.approx(1.0)  # one week between them
    assert s["T"] == pytest.approx(13 / 7)  # 1997-01-01 to 1997-01-14, the last day before as_of


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bgnbd_recovers_known_parameters_from_a_simulated_log(tmp_path, config, seed):
    """20,000 customers over 104 weeks. Counting distinct purchase days merges same-day repeat purchases of
    heavy buyers (about 1.4% of repeats here), which lifts alpha by about 0.17 (1.6 standard errors) on
    average over seeds; see bench/README.md."""
    truth = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    simulate_bgnbd(tmp_path / "b", members=20_000, weeks=104, seed=seed, **truth)
    ds = open_dataset(tmp_path / "b")
    summary = btyd.summary_from_features(features.build(ds, ds.observed_until, config.data))
    model = btyd.fit_bgnbd(summary)
    for (name, true), se in zip(truth.items(), model.standard_errors, strict=True):
        fitted = model.params[name]
        assert fitted == pytest.approx(true, rel=0.15), name
        assert abs(fitted - true) < 3 * se, (name, fitted, se)


def test_bgnbd_predictions_behave():
    model = btyd.BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)
    # No repeat purchase: alive with certainty (dropout happens only after a purchase).
    assert model.p_alive(0, 0, 30) == pytest.approx(1.0)
    # The same frequency with a long silence since the last purchase: less likely alive.
    assert model.p_alive(5, 30, 38) > model.p_alive(5, 5, 38)
    p = model.p_any_purchase(np.array([0, 2, 10]), np.array([0, 20, 37]), np.array([38, 38, 38]), 39)
    assert np.all((p > 0) & (p < 1)) and p[2] > p[1] > p[0]
    assert model.expected_purchases(2, 30, 38, 39) > model.expected_purchases(2, 30, 38, 10)


def test_gamma_gamma_shrinks_spend_towards_the_population():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 10, 2000).astype(float)
    m = rng.gamma(6, 5, 2000)
    fitted = btyd.fit_gamma_gamma(pd.DataFrame({"x": x, "spend_per_day": m}))
    spend = fitted.expected_spend(np.array([0.0, 1.0, 50.0]), np.array([100.0, 100.0, 100.0]))
    population = fitted.p * fitted.gamma / (fitted.q - 1)
    assert spend[0] == pytest.approx(population)
    assert population < spend[1] < spend[2] < 100.0


def test_spend_is_counted_per_purchase_day_the_unit_bgnbd_counts():
    """Two members who bought on the same 12 days for 100 an order, one with two orders on each of those
    days: BG/NBD counts 12 purchase days for both, so the second spends 200 per counted purchase."""
    summary = btyd.summary_arrays(
        np.array([12.0, 12.0]), np.array([360.0, 360.0]), np.array([20.0, 20.0]), np.array([1200.0, 2400.0])
    )
    np.testing.assert_allclose(summary["spend_per_day"], [100.0, 200.0])
    np.testing.assert_allclose(summary["x"], [11.0, 11.0])
    from retain.value import ValueModel

    model = ValueModel(btyd.BGNBD(r=0.25, alpha=4.0, a=0.8, b=2.5), btyd.GammaGamma(p=6.0, q=4.0, gamma=15.0), 365, 0.3)
    value = model.value(summary)
    population = 6.0 * 15.0 / 3.0  # both shrink towards it by the same weight: the gap is that weight x 100
    weight = 6.0 * 11 / (6.0 * 11 + 3.0)
    assert value[1] / value[0] == pytest.approx(
        (weight * 200 + (1 - weight) * population) / (weight * 100 + (1 - weight) * population)
    )
