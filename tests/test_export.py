"""The daily export: its files, the budget, idempotence, atomicity, the exit codes, and agreement with the
scoring service on the same snapshot. The champions come from the training job on the small shop."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT

from retain import decisions, export
from retain.errors import RetainError
from retain.registry import Registry

DAY = pd.Timestamp("2025-01-20")


@pytest.fixture(scope="module")
def setup(trained, tmp_path_factory):
    """The trained store's config with its own snapshot folder (the service tests keep theirs)."""
    env, config = trained
    tmp = tmp_path_factory.mktemp("export")
    config = dataclasses.replace(config, serving=dataclasses.replace(config.serving, snapshot_dir=str(tmp / "snap")))
    env = {**env, "RETAIN_SERVING_SNAPSHOT_DIR": str(tmp / "snap")}
    return config, env, tmp


@pytest.fixture(scope="module")
def exported(setup, small_shop):
    config, _, tmp = setup
    result = export.run(small_shop, config, Registry(config.mlflow), DAY, tmp / "out")
    return result, config


def test_the_export_writes_the_list_controls_scores_summary_and_report(exported, small_shop):
    result, config = exported
    folder = result.folder
    assert result.status == "written" and folder.name == "2025-01-20"
    assert {p.name for p in folder.iterdir()} == {
        "at_risk.parquet",
        "at_risk.csv",
        "controls.parquet",
        "scores.parquet",
        "summary.json",
        "report.html",
        "MANIFEST.json",
    }
    at_risk = pd.read_parquet(folder / "at_risk.parquet")
    assert list(at_risk.columns[: len(export.LIST_COLUMNS)]) == export.LIST_COLUMNS and len(at_risk) > 0
    assert at_risk["expected_value"].is_monotonic_decreasing and (at_risk["expected_value"] > 0).all()
    assert set(at_risk["action"]) <= {"winback_coupon", "subscription_offer"}
    assert at_risk["reason_1"].str.contains(" = ").all() and at_risk["reason_1_feature"].notna().all()
    coupons = at_risk[at_risk["action"] == "winback_coupon"]
    assert set(coupons["offer_detail"]) <= set(config.winback.coupon_tiers)

    raw = (folder / "at_risk.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs for Chinese text
    csv = pd.read_csv(folder / "at_risk.csv", encoding="utf-8-sig")
    assert csv["member_id"].tolist() == at_risk["member_id"].tolist()

    scores = pd.read_parquet(folder / "scores.parquet")
    assert (
        scores["member_id"].is_unique
        and len(scores) == json.loads((folder / "summary.json").read_text())["members_scored"]
    )
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    for key in ("as_of", "model_versions", "dataset_fingerprint", "policy", "counts_by_segment", "counts_by_action"):
        assert key in summary
    assert summary["dataset_fingerprint"] == small_shop.fingerprint and summary["as_of"] == "2025-01-20"
    assert 0 < summary["budget_used"] <= config.winback.daily_budget
    assert summary["budget_used"] == pytest.approx(at_risk["cost"].sum(), abs=0.01)
    assert sum(summary["counts_by_action"].values()) == len(at_risk)
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 5 and "http" not in html.replace("http-equiv", "")


def test_the_control_group_is_recorded_and_never_on_the_list(exported):
    result, config = exported
    at_risk = pd.read_parquet(result.folder / "at_risk.parquet")
    controls = pd.read_parquet(result.folder / "controls.parquet")
    assert len(controls) > 0 and not set(controls["member_id"]) & set(at_risk["member_id"])
    assert (controls["action"] != "none").all() and (controls["expected_value"] > 0).all()
    share = len(controls) / (len(controls) + len(at_risk))
    assert share == pytest.approx(config.decisions.holdout_share, abs=0.03)
    scores = pd.read_parquet(result.folder / "scores.parquet").set_index("member_id")
    assert (scores.loc[controls["member_id"], "status"] == decisions.CONTROL).all()


def test_a_rerun_changes_nothing_and_gives_byte_identical_files(exported, small_shop):
    result, config = exported
    before = {p.name: p.read_bytes() for p in result.folder.iterdir()}
    again = export.run(small_shop, config, Registry(config.mlflow), DAY, result.folder.parent)
    assert again.status == "unchanged"
    assert {p.name: p.read_bytes() for p in result.folder.iterdir()} == before
    # byte-identical when written afresh elsewhere, too
    fresh = export.run(small_shop, config, Registry(config.mlflow), DAY, result.folder.parent.parent / "fresh")
    assert {p.name: p.read_bytes() for p in fresh.folder.iterdir()} == before


def test_different_content_needs_force(exported, small_shop):
    result, config = exported
    out = result.folder.parent.parent / "force"
    export.run(small_shop, config, Registry(config.mlflow), DAY, out)
    smaller = dataclasses.replace(config, winback=dataclasses.replace(config.winback, daily_budget=500.0))
    with pytest.raises(export.ExportExists) as raised:
        export.run(small_shop, smaller, Registry(config.mlflow), DAY, out)
    assert raised.value.exit_code == 3
    assert json.loads((out / "2025-01-20" / "summary.json").read_text())["budget"] == config.winback.daily_budget
    replaced = export.run(small_shop, smaller, Registry(config.mlflow), DAY, out, force=True)
    assert replaced.status == "replaced" and replaced.summary["budget_used"] <= 500.0
    assert [p.name for p in out.iterdir()] == ["2025-01-20"]


def test_a_crash_leaves_no_folder_for_the_date_and_the_next_run_cleans_up(exported, small_shop, monkeypatch):
    result, config = exported
    out = result.folder.parent.parent / "crash"
    out.mkdir()
    leftover = out / ".2025-01-20.tmp-999999999"  # left by a process that no longer runs
    leftover.mkdir()
    (leftover / "at_risk.csv").write_text("half", encoding="utf-8")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(export.report, "html", crash)
        with pytest.raises(OSError):
            export.run(small_shop, config, Registry(config.mlflow), DAY, out)
    assert list(out.iterdir()) == []  # no folder for the date, and the old leftover is gone too
    assert export.run(small_shop, config, Registry(config.mlflow), DAY, out).status == "written"


def test_a_date_after_the_data_or_in_the_future_is_refused(small_shop):
    with pytest.raises(RetainError, match="after the data's end"):
        export.check_date("2025-02-05", small_shop, today=pd.Timestamp("2026-01-01"))
    with pytest.raises(RetainError, match="in the future"):
        export.check_date("2025-01-20", small_shop, today=pd.Timestamp("2025-01-01"))
    with pytest.raises(RetainError, match="not a date"):
        export.check_date("yesterday", small_shop)
    assert export.check_date("2025-02-04", small_shop) == small_shop.observed_until


def test_the_service_gives_the_export_s_scores_and_unbudgeted_action(exported):
    """Same member, same snapshot: the endpoint and the list agree (the export wrote the snapshot)."""
    from retain.serving_state import ServingState

    result, config = exported
    state = ServingState.load(config, Registry(config.mlflow), generation=0)
    scores = pd.read_parquet(result.folder / "scores.parquet").set_index("member_id")
    listed = pd.read_parquet(result.folder / "at_risk.parquet")["member_id"].head(20).tolist()
    unlisted = scores.index[scores["status"] == decisions.NO_ACTION][:20].tolist()
    body = json.loads(state.score_response(listed + unlisted))
    assert body["as_of"] == "2025-01-20" and body["unknown"] == []
    for record in body["scores"]:
        row = scores.loc[record["member_id"]]
        for key in ("churn_risk", "repurchase_prob", "expected_value"):
            assert record[key] == pytest.approx(row[key], abs=1e-6), key
        assert (record["action"], record["segment"], record["offer_detail"]) == (
            row["action"],
            row["segment"],
            row["offer_detail"],
        )
        assert len(record["reasons"]) == 3 and record["reasons"][0]["label"]  # unlisted: explained on request


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "retain.cli", "export", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_line_exit_codes(setup, exported, small_shop):
    _, env, tmp = setup
    result, _ = exported
    out = str(result.folder.parent)
    same = run_cli(env, "--date", "2025-01-20", "--data", str(small_shop.path), "--out", out)
    assert same.returncode == 0 and "same content" in same.stdout
    changed = run_cli(
        {**env, "RETAIN_WINBACK_DAILY_BUDGET": "100"},
        "--date",
        "2025-01-20",
        "--data",
        str(small_shop.path),
        "--out",
        out,
    )
    assert changed.returncode == 3 and "--force" in changed.stderr and "Traceback" not in changed.stderr
    future = run_cli(env, "--date", "2031-01-01", "--data", str(small_shop.path), "--out", str(tmp / "cli"))
    assert future.returncode == 2 and "future" in future.stderr and not (tmp / "cli" / "2031-01-01").exists()


def test_no_csv_leaves_the_csv_out(exported, small_shop):
    result, config = exported
    out = result.folder.parent.parent / "no-csv"
    lean = export.run(small_shop, config, Registry(config.mlflow), DAY, out, csv=False)
    assert not (lean.folder / "at_risk.csv").exists()
    manifest = json.loads((lean.folder / export.MANIFEST).read_text())
    assert "at_risk.csv" not in manifest
    assert (lean.folder / "at_risk.parquet").read_bytes() == (result.folder / "at_risk.parquet").read_bytes()
