import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, make_dataset, orders_frame
from sklearn.metrics import roc_auc_score

from retain import drift, export, monitor, promotions
from retain.features import columns_from
from retain.registry import Registry

# --- drift --------------------------------------------------------------------------------------------------


def test_psi_matches_a_hand_computation():
    reference = drift.reference_bins(np.arange(100.0), bins=4)  # quartile edges: values of the reference
    assert reference["edges"] == [24.0, 49.0, 74.0]
    assert reference["shares"] == [0.25, 0.25, 0.25, 0.25] and reference["missing"] == 0.0
    # today: half in the first quartile, a quarter in the second, a quarter missing
    today = np.array([10.0] * 50 + [30.0] * 25 + [np.nan] * 25)
    floor = drift.SHARE_FLOOR
    by_hand = (
        (0.5 - 0.25) * np.log(0.5 / 0.25)
        + 0.0  # second bin: 0.25 against 0.25
        + 2 * (floor - 0.25) * np.log(floor / 0.25)  # third and fourth bins: empty today
        + (0.25 - floor) * np.log(0.25 / floor)  # missing: none in the reference
    )
    assert drift.psi(reference, today) == pytest.approx(by_hand)
    assert drift.psi(reference, np.arange(100.0)) == pytest.approx(0.0)


def test_tied_values_make_fewer_bins_not_empty_ones():
    reference = drift.reference_bins(np.array([0.0] * 80 + [1.0] * 20))
    assert reference["edges"] == [0.0, 1.0] and reference["shares"] == [0.8, 0.2, 0.0]
    assert drift.psi(reference, np.array([0.0] * 80 + [1.0] * 20)) == pytest.approx(0.0)


# --- estimated accuracy ---------------------------------------------------------------------------------------


def test_the_expected_roc_auc_of_calibrated_probabilities():
    # two members: 0.8 x (1 - 0.2) concordant against 0.2 x (1 - 0.8) discordant
    assert monitor.expected_roc_auc(np.array([0.2, 0.8])) == pytest.approx(0.64 / 0.68)
    assert monitor.expected_roc_auc(np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties: half
    # outcomes drawn from the probabilities themselves: the realised ROC-AUC averages the estimate
    rng = np.random.default_rng(0)
    p = rng.beta(1.0, 2.0, 3000)
    realised = [roc_auc_score(rng.random(len(p)) < p, p) for _ in range(100)]
    assert np.mean(realised) == pytest.approx(monitor.expected_roc_auc(p), abs=0.005)


# --- the exports read back ------------------------------------------------------------------------------------


def write_day(folder, scores: pd.DataFrame, versions: dict) -> None:
    folder.mkdir(parents=True)
    scores.reset_index().to_parquet(folder / "scores.parquet")
    (folder / "summary.json").write_text(json.dumps({"model_versions": versions}), encoding="utf-8")


def test_a_missing_or_corrupt_scores_file_skips_the_day_with_a_sentence(tmp_path):
    scores = pd.DataFrame({"churn_risk": [0.2], "repurchase_prob": [0.7]}, index=pd.Index(["m1"], name="member_id"))
    write_day(tmp_path / "2025-01-01", scores, {"retain-churn": "3"})
    write_day(tmp_path / "2025-02-01", scores, {"retain-churn": "3"})
    (tmp_path / "2025-02-01" / "scores.parquet").write_bytes(b"not parquet")
    (tmp_path / "2025-03-01").mkdir()
    (tmp_path / "notes").mkdir()  # not an export day: ignored
    days, skipped = monitor.export_days(tmp_path)
    assert [d.day for d in days] == [pd.Timestamp("2025-01-01")] and days[0].versions == {"retain-churn": "3"}
    assert skipped == [
        "2025-02-01: skipped, its scores or summary cannot be read (ArrowInvalid)",
        "2025-03-01: skipped, scores.parquet is missing",
    ]


def test_no_realised_figure_before_the_outcome_window_closes(tmp_path, config):
    """Churn over 90 days, repurchase over 30: on a day 40 days before the data ends, repurchase is realised
    (its labels computed from the orders) and churn only estimated."""
    rows = [(m, "2025-01-05", 50.0) for m in ("a", "b", "c", "d")] + [
        ("a", "2025-03-01", 20.0),
        ("b", "2025-03-10", 20.0),
    ]
    dataset = make_dataset(tmp_path, {"orders": orders_frame(rows)}, "2025-03-22")
    day = monitor.ExportDay(
        pd.Timestamp("2025-02-10"),
        pd.DataFrame(
            {"churn_risk": [0.1, 0.3, 0.8, 0.9], "repurchase_prob": [0.9, 0.6, 0.3, 0.2]},
            index=pd.Index(["a", "b", "c", "d"], name="member_id"),
        ),
        {"retain-churn": "1", "retain-repurchase": "2"},
    )
    churn, repurchase = monitor.accuracy(dataset, config, day, {"churn": {"roc_auc": 0.9}})
    assert churn["status"] == "estimated" and churn["window_closes"] == "2025-05-11" and "roc_auc" not in churn
    assert churn["mean_predicted"] == pytest.approx(0.525) and churn["promoted_roc_auc"] == 0.9
    assert repurchase["status"] == "realised" and repurchase["version"] == "2"
    assert repurchase["observed_rate"] == 0.5 and repurchase["roc_auc"] == 1.0  # a and b bought: ranked first


# --- alerts ---------------------------------------------------------------------------------------------------


def realised_row(**overrides) -> dict:
    row = {"day": "2025-09-01", "task": "churn", "version": "3", "status": "realised", "roc_auc": 0.95}
    return {**row, "promoted_roc_auc": 0.95, "ece": 0.01, "promoted_ece": 0.012, **overrides}


def test_each_alert_says_what_crossed_which_limit_and_what_to_do(config):
    assert monitor.alerts([realised_row()], [], config) == []
    assert monitor.alerts([realised_row(status="estimated", ece=0.5)], [], config) == []  # not realised yet
    assert monitor.alerts([realised_row(ece=0.081)], [], config) == [
        "churn model v3: realised ECE 0.081 on the 2025-09-01 list (promoted at 0.012), above monitor.max_ece 0.05 "
        "— retrain with make train"
    ]
    # the lists of the version serving now; the latest that crossed is named, once; a replaced version is history
    lists = [
        realised_row(day="2025-08-01", ece=0.2),
        realised_row(day="2025-09-01", ece=0.3),
        realised_row(day="2025-10-01"),
    ]
    (alert,) = monitor.alerts(lists, [], config, serving={"churn": "3"})
    assert "realised ECE 0.300 on the 2025-09-01 list" in alert
    assert monitor.alerts(lists, [], config, serving={"churn": "4"}) == []
    # a version let through at ECE 0.09 (a shop's first model) is not stale at 0.06
    assert monitor.alerts([realised_row(ece=0.06, promoted_ece=0.09)], [], config) == []
    assert monitor.alerts([realised_row(roc_auc=0.91)], [], config) == [
        "churn model v3: realised ROC-AUC 0.910 on the 2025-09-01 list, 0.040 below the 0.950 it was promoted at "
        "(limit 0.03) — retrain with make train"
    ]
    report = {
        "task": "repurchase",
        "version": "4",
        "as_of": "2025-12-31",
        "psi": [
            {"feature": "browse_30d", "label": "近30天浏览次数", "psi": 0.9, "top": True},
            {"feature": "tenure_days", "label": "入会天数", "psi": 0.5, "top": False},  # not a top input
            {"feature": "score", "label": "repurchase score", "psi": 0.3, "top": True},
            {"feature": "orders_30d", "label": "近30天订单数", "psi": 0.1, "top": True},
        ],
    }
    assert monitor.alerts([], [report], config) == [
        "repurchase model v4: members have shifted since training as of 2025-12-31: 近30天浏览次数 (PSI 0.90), "
        "repurchase score (PSI 0.30), above monitor.max_psi 0.25 — check the data, then retrain with make train"
    ]


# --- rows a day of the feeds ------------------------------------------------------------------------------


def test_a_feed_that_halves_shows_within_days_and_a_promotion_does_not():
    days = pd.date_range("2025-08-01", "2025-10-10")
    windows = [["06-01", "06-18"], ["09-20", "09-25"]]
    daily = pd.Series(1000.0, index=days)
    daily[promotions.in_windows(days, windows)] = 5000.0  # a promotion: busier, not a broken feed
    daily[days.day_of_week == 6] = 700.0  # a quiet weekday: the median of a week is not moved by it
    trained = pd.Timestamp("2025-09-01")
    steady = drift.volume(daily[days < "2025-10-01"], trained, windows)
    assert steady["ratio"] == 1.0 and steady["reference_per_day"] == 1000.0
    assert (steady["recent_first"], steady["recent_last"]) == (
        "2025-09-18",
        "2025-09-30",
    )  # 9-20..9-25 left out: 18, 19, 26..30
    daily[days >= "2025-10-06"] /= 2  # a tracking change: half the events recorded from 10-06
    halved = drift.volume(daily, trained, windows)  # four days later: 5 of the last 7 days are halved
    assert halved["ratio"] == 0.5 and halved["recent_last"] == "2025-10-10"
    assert drift.volume(daily[days < "2025-08-10"], trained, windows) is None  # 6 of 28 reference days: too few


def test_rows_a_day_are_counted_per_calendar_day_every_day_listed(tmp_path):
    orders = orders_frame(
        [("m1", "2025-01-01 09:00", 10), ("m2", "2025-01-01 23:59", 10), ("m1", "2025-01-03 00:00", 5)]
    )
    dataset = make_dataset(tmp_path, {"orders": orders}, "2025-01-05")
    daily = drift.daily_rows(dataset, "orders", pd.Timestamp("2024-12-31"), pd.Timestamp("2025-01-04"))
    assert daily.to_dict() == {
        pd.Timestamp("2024-12-31"): 0.0,
        pd.Timestamp("2025-01-01"): 2.0,
        pd.Timestamp("2025-01-02"): 0.0,
        pd.Timestamp("2025-01-03"): 1.0,
    }


def test_the_inputs_a_feed_builds_are_read_off_the_feature_computation(config):
    events = columns_from("events", config.data)
    assert {"views_30d", "days_since_last_event", "events_trend_90d"} <= events
    assert not events & columns_from("orders", config.data)  # a browse input is not an order input
    assert {"recency_days", "frequency", "monetary_mean"} <= columns_from("orders", config.data)


def test_no_feed_check_for_a_model_whose_training_day_is_not_stored(small_shop, config):
    """A reference written before the feed check has no training day: nothing to compare, no error."""
    report = {"task": "churn", "version": "1", "trained": None, "psi": []}
    assert monitor.volume_report(small_shop, config, [report], small_shop.observed_until) == []
    trained = {**report, "trained": "2024-12-01"}
    (events, orders) = monitor.volume_report(small_shop, config, [trained], small_shop.observed_until)
    assert (events["table"], orders["table"]) == ("events", "orders") and events["tasks"] == ["churn"]


def test_a_volume_alert_names_the_feed_its_change_and_the_inputs_built_on_it(config):
    row = {
        "table": "events",
        "trained": "2025-09-01",
        "tasks": ["churn", "repurchase"],
        "reference_per_day": 2463.0,
        "recent_per_day": 1326.0,
        "ratio": 1326.0 / 2463.0,
        "recent_first": "2025-09-29",
        "recent_last": "2025-10-05",
        "inputs": ["近90天浏览趋势", "距上次浏览天数", "近30天浏览次数", "近90天加购次数"],
    }
    assert monitor.alerts([], [], config, volumes=[row]) == [
        "events: 1,326 rows a day from 2025-09-29 to 2025-10-05 (median, promotion days left out), 0.54x the 2,463 "
        "a day before the churn and repurchase models trained on 2025-09-01 (limit monitor.max_volume_ratio 1.5) — "
        "check the events feed before trusting the scores; the inputs built on it that moved most: 近90天浏览趋势, "
        "距上次浏览天数, 近30天浏览次数; retrain with make train once it is right"
    ]
    assert monitor.alerts([], [], config, volumes=[{**row, "ratio": 1.4}]) == []  # within 1/1.5 .. 1.5
    assert len(monitor.alerts([], [], config, volumes=[{**row, "ratio": 1.6}])) == 1  # a feed that doubles rows


# --- retain monitor, end to end ----------------------------------------------------------------------------


def test_retain_monitor_exits_0_when_all_holds_and_4_on_an_alert(trained, small_shop, tmp_path):
    env, config = trained
    exports = tmp_path / "exports"
    for day in ("2024-10-01", "2025-01-20"):  # churn's window closed for the first; both open for the second
        export.run(small_shop, config, Registry(config.mlflow), pd.Timestamp(day), exports)
    (exports / "2024-12-01").mkdir()  # a day without scores: skipped, not a failure
    command = [sys.executable, "-m", "retain.cli", "monitor", "--data", str(small_shop.path), "--exports", str(exports)]
    run_env = {**os.environ, **env}
    fine = subprocess.run(command, env=run_env, capture_output=True, text=True, cwd=ROOT)
    assert fine.returncode == 0, fine.stderr
    assert "2024-12-01: skipped, scores.parquet is missing" in fine.stdout and "no alert" in fine.stdout
    doc = json.loads((exports / "monitor.json").read_text())
    statuses = {(row["day"], row["task"]): row["status"] for row in doc["days"]}
    assert statuses[("2024-10-01", "churn")] == "realised" and statuses[("2025-01-20", "churn")] == "estimated"
    assert {report["task"] for report in doc["drift"]} == {"churn", "repurchase"} and doc["alerts"] == []
    volumes = {row["table"]: row for row in doc["volume"]}  # the feeds as the models were trained on them
    assert set(volumes) == {"events", "orders"} and all(0.67 < row["ratio"] < 1.5 for row in volumes.values())
    assert "views_30d" not in volumes["events"]["inputs"] and volumes["events"]["inputs"]  # labels, not names

    strict = subprocess.run(
        command, env={**run_env, "RETAIN_MONITOR_MAX_ECE": "0.0001"}, capture_output=True, text=True, cwd=ROOT
    )
    assert strict.returncode == monitor.ALERT_EXIT
    # an ECE alert fires where the realised figure is above both the limit and the version's promotion figure
    pattern = (
        r"alert: (churn|repurchase) model v1: realised ECE 0\.\d{3} on the 2024-10-01 list \(promoted at 0\.\d{3}\)"
    )
    assert re.search(pattern, strict.stderr) and "Traceback" not in strict.stderr
    assert json.loads((exports / "monitor.json").read_text())["alerts"]


def test_the_report_shows_model_health_from_the_latest_monitor_run():
    from retain import report

    assert "No <code>retain monitor</code> run" in report.health_section(None)
    estimated_only = {
        "as_of": "2025-02-01",
        "days": [
            {
                "day": "2025-01-20",
                "task": "churn",
                "status": "estimated",
                "expected_roc_auc": 0.9,
                "promoted_roc_auc": 0.91,
            }
        ],
        "drift": [{"task": "churn", "version": "2", "psi": [{"label": "近30天浏览次数", "psi": 0.31, "top": True}]}],
        "alerts": ["churn model v2: members have shifted since training as of 2025-02-01: ..."],
    }
    page = report.health_section(estimated_only)
    assert "<img" in page and "as of 2025-02-01" in page and "近30天浏览次数 (PSI 0.31)" in page
    assert "members have shifted" in page and "The feeds" not in page  # a monitor.json from before the check
    feed = {"table": "events", "recent_per_day": 1326.0, "reference_per_day": 2463.0, "ratio": 0.538}
    with_feeds = {**estimated_only, "volume": [{**feed, "recent_first": "2025-01-24", "recent_last": "2025-01-31"}]}
    assert "events: 1,326 rows a day from 2025-01-24 to 2025-01-31, 0.54x the 2,463" in report.health_section(
        with_feeds
    )
    realised = {**estimated_only, "alerts": [], "days": [*estimated_only["days"], realised_row(day="2024-10-01")]}
    assert "none: every figure holds" in report.health_section(realised)
