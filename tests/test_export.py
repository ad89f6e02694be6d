"""The daily export: its files, the budget, idempotence, atomicity, the exit codes, and agreement with the
scoring service on the same snapshot. The champions come from the training job on the small shop."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

from retain import decisions, export, files, readout, snapshot
from retain.dataset import write_dataset
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
        "readout.json",
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
    assert html.count("data:image/png;base64,") == 6 and "http" not in html.replace("http-equiv", "")
    # the readout of the campaigns whose window closed by the export's day, as `retain readout` gives it
    campaigns = json.loads((folder / "readout.json").read_text())["campaigns"]
    days = config.winback.response_days
    assert campaigns and "Did past campaigns work?" in html
    assert all(pd.Timestamp(c["sent_day"]) + pd.Timedelta(days=days) <= pd.Timestamp(DAY) for c in campaigns)
    same = readout.readout(readout.offer_outcomes(small_shop, days, until=pd.Timestamp(DAY)), config, days)
    assert [c["sent_day"] for c in campaigns] == [c["sent_day"] for c in same]


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
    assert {p.name for p in out.iterdir()} == {"2025-01-20", export.LOCK_FILE}


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
    assert [p.name for p in out.iterdir()] == [export.LOCK_FILE]  # no folder for the date, no leftover
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


# --- nothing a user owns is lost or exposed (through the command line) -------------------------------


def export_cli(env: dict, data, out, *args: str) -> subprocess.CompletedProcess:
    return run_cli(env, "--data", str(data), "--out", str(out), *args)


def test_a_back_dated_export_does_not_move_the_live_service_back(setup, small_shop, tmp_path):
    config, env, _ = setup
    env = {**env, "RETAIN_SERVING_SNAPSHOT_DIR": str(tmp_path / "snap")}
    own = dataclasses.replace(config, serving=dataclasses.replace(config.serving, snapshot_dir=str(tmp_path / "snap")))
    export.run(small_shop, own, Registry(config.mlflow), DAY, tmp_path / "out")
    assert snapshot.served_as_of(tmp_path / "snap") == DAY
    older = export_cli(env, small_shop.path, tmp_path / "out", "--date", "2025-01-10")
    assert older.returncode == 0 and "keeps serving 2025-01-20" in older.stdout
    assert (tmp_path / "snap" / "2025-01-10.parquet").exists()
    assert snapshot.served_as_of(tmp_path / "snap") == DAY  # the service still answers for the later day
    chosen = export_cli(env, small_shop.path, tmp_path / "out", "--date", "2025-01-10", "--serve")
    assert chosen.returncode == 0 and snapshot.served_as_of(tmp_path / "snap") == pd.Timestamp("2025-01-10")


def test_a_damaged_export_is_refused_and_force_rewrites_it(setup, exported, small_shop, tmp_path):
    config, env, _ = setup
    good = exported[0].folder
    export.run(small_shop, config, Registry(config.mlflow), DAY, tmp_path / "out")
    folder = tmp_path / "out" / "2025-01-20"
    at_risk = pd.read_parquet(folder / "at_risk.parquet")
    at_risk.head(len(at_risk) // 2).to_parquet(folder / "at_risk.parquet", index=False)  # half the rows
    (folder / "at_risk.csv").write_text("member_id\nm1\n", encoding="utf-8")  # a two-line CSV
    assert export.damaged_files(folder) == ["at_risk.csv", "at_risk.parquet"]
    rerun = export_cli(env, small_shop.path, tmp_path / "out", "--date", "2025-01-20")
    assert rerun.returncode == 3 and "do not match" in rerun.stderr and "at_risk.csv" in rerun.stderr
    assert "Traceback" not in rerun.stderr
    forced = export_cli(env, small_shop.path, tmp_path / "out", "--date", "2025-01-20", "--force")
    assert forced.returncode == 0 and "replaced" in forced.stdout
    assert export.damaged_files(folder) == []
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {p.name: p.read_bytes() for p in good.iterdir()}
    again = export.run(small_shop, config, Registry(config.mlflow), DAY, tmp_path / "out", force=True)
    assert again.status == "replaced"  # --force always rewrites, even the same content


def test_force_never_replaces_a_folder_retain_did_not_write(setup, small_shop, tmp_path):
    _, env, _ = setup
    mine = tmp_path / "out" / "2025-01-20"
    mine.mkdir(parents=True)
    (mine / "plan.xlsx").write_text("mine", encoding="utf-8")
    result = export_cli(env, small_shop.path, tmp_path / "out", "--date", "2025-01-20", "--force")
    assert result.returncode == 2 and "is not a retain export" in result.stderr
    assert [p.name for p in mine.iterdir()] == ["plan.xlsx"]


def test_a_second_export_into_the_same_folder_is_refused_while_one_runs(setup, small_shop, tmp_path):
    _, env, _ = setup
    out = tmp_path / "out"
    out.mkdir()
    with files.exclusive_lock(out / export.LOCK_FILE, "held by the test"):  # as a running export holds it
        result = export_cli(env, small_shop.path, out, "--date", "2025-01-20")
    assert result.returncode == 3 and "Another `retain export` is writing into" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "2025-01-20").exists()


def test_leftovers_are_removed_under_the_lock_whatever_host_left_them(exported, small_shop, tmp_path):
    result, config = exported
    out = tmp_path / "out"
    out.mkdir()
    other_host = out / f".2025-01-20.tmp-otherhost-{os.getpid()}-0a1b2c3d"  # its pid is alive *here*
    other_host.mkdir()
    users = out / ".config"  # a dot folder of the user's is not a leftover
    users.mkdir()
    written = export.run(small_shop, config, Registry(config.mlflow), DAY, out)
    assert written.status == "written" and not other_host.exists() and users.exists()


def test_files_are_flushed_to_disk_before_they_are_renamed_into_place(exported, small_shop, tmp_path, monkeypatch):
    result, config = exported
    flushed = []
    real = files.fsync_path
    monkeypatch.setattr(files, "fsync_path", lambda path: flushed.append(Path(path).name) or real(path))
    export.run(small_shop, config, Registry(config.mlflow), DAY, tmp_path / "out")
    written = {p.name for p in (tmp_path / "out" / "2025-01-20").iterdir()}
    assert written <= set(flushed)  # every file, while still in the temporary folder
    assert any(name.startswith(".2025-01-20.parquet.tmp-") for name in flushed)  # the snapshot, too
    assert any(name.startswith(".CURRENT.tmp-") for name in flushed)


def test_spreadsheet_formulas_in_member_ids_are_neutralised_in_the_csv_only(setup, small_shop, tmp_path):
    _, env, _ = setup
    prefixes = ["=HYPERLINK(1)+", "+", "-", "@", "\t", "\r"]

    def hostile(member_id: str) -> str:
        return prefixes[int(member_id[-1]) % len(prefixes)] + member_id

    tables = {}
    for table in ("orders", "members", "events", "offers", "subscriptions", "suppressions"):
        if small_shop.has(table):
            frame = small_shop.read(table)
            tables[table] = frame.assign(member_id=frame["member_id"].map(hostile))
    write_dataset(tmp_path / "hostile", tables, small_shop.observed_until, "CNY")
    result = export_cli(env, tmp_path / "hostile", tmp_path / "out", "--date", "2025-01-20")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "2025-01-20"
    raw = pd.read_parquet(folder / "at_risk.parquet")["member_id"]
    cells = pd.read_csv(folder / "at_risk.csv", encoding="utf-8-sig", dtype=str, keep_default_na=False)["member_id"]
    assert raw.str.startswith(tuple(prefixes)).all() and len(raw) > 20
    assert cells.tolist() == ("'" + raw).tolist()  # shown as text in a spreadsheet, never run
    assert export.spreadsheet_safe(pd.DataFrame({"x": ["ok", "=1+1", "-2"], "n": [-1.0, 2.0, 3.0]})).equals(
        pd.DataFrame({"x": ["ok", "'=1+1", "'-2"], "n": [-1.0, 2.0, 3.0]})
    )


@pytest.mark.parametrize(("file_mode", "folder_mode"), [(None, 0o750), ("0600", 0o700)])
def test_member_data_is_readable_by_the_owner_and_group_only(setup, small_shop, tmp_path, file_mode, folder_mode):
    _, env, _ = setup
    env = {**env, "RETAIN_SERVING_SNAPSHOT_DIR": str(tmp_path / "snap")}
    if file_mode:
        env["RETAIN_EXPORT_FILE_MODE"] = file_mode
    result = export_cli(env, small_shop.path, tmp_path / "out", "--date", "2025-01-20")
    assert result.returncode == 0, result.stderr
    expected = int(file_mode or "0640", 8)
    folder = tmp_path / "out" / "2025-01-20"
    for path in (tmp_path / "out", folder, tmp_path / "snap"):
        assert stat.S_IMODE(path.stat().st_mode) == folder_mode, path
    for path in [*folder.iterdir(), tmp_path / "snap" / "2025-01-20.parquet", tmp_path / "snap" / "CURRENT"]:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_a_dataset_in_another_currency_than_the_money_settings_is_refused(tmp_path, config):
    """CDNOW is in USD; the shipped tiers, budget and send cost are in CNY: no list priced in both."""
    from conftest import orders_frame

    from retain.dataset import open_dataset, write_dataset

    write_dataset(
        tmp_path / "usd", {"orders": orders_frame([("a", "2025-01-05", 30.0)])}, pd.Timestamp("2025-02-01"), "USD"
    )
    usd = open_dataset(tmp_path / "usd")
    with pytest.raises(RetainError, match=r"is in USD but the money settings .* are in CNY \(data\.currency\)"):
        export.run(usd, config, None, pd.Timestamp("2025-02-01"), tmp_path / "exports")
    assert not (tmp_path / "exports").exists()
