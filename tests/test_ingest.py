import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import CDNOW_MASTER, ROOT

from retain import contract as c
from retain.dataset import open_dataset
from retain.errors import RetainError
from retain.ingest import IngestRejected, ingest

HEADER = "order_id,member_id,ordered_at,amount,category,status\n"


def write(tmp_path, text, name="orders.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_cdnow_ingests_with_every_row_kept(tmp_path):
    report = ingest(
        {"orders": CDNOW_MASTER}, tmp_path / "cdnow", ROOT / "examples" / "cdnow_mapping.toml", currency="USD"
    )
    assert report["tables"]["orders"] == {
        "rows_read": 69659,
        "rows_kept": 69659,
        "rows_quarantined": 0,
        "quarantined_by_reason": {},
        "guest": 0,
        "guest_revenue_share": 0.0,
        "excluded": 0,
        "cancellations_matched": 0,
        "cancellations_unmatched": 0,
        "orders_written": 69659,
    }
    orders = open_dataset(tmp_path / "cdnow").read("orders")
    assert orders["order_id"].is_unique and orders["member_id"].nunique() == 23570
    meta = json.loads((tmp_path / "cdnow" / "dataset.json").read_text())
    assert meta["observed_until"].startswith("1998-07-01") and meta["currency"] == "USD"
    assert (orders["status"] == "paid").all()  # an order without status is paid


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("o2,m2,2025-13-45,10,食品,paid", "bad_date"),
        ("o2,m2,2025-01-02,ten,食品,paid", "bad_amount"),
        ("o2,m2,2025-01-02,-5,食品,paid", "negative_amount"),
        ("o1,m2,2025-01-02,10,食品,paid", "duplicate_order_id"),
        ("o2,m2,2025-03-01,10,食品,paid", "future_date"),
        ("o2,m2,2025-01-02,10,食品,shipped", "bad_value"),
    ],
)
def test_each_bad_row_is_quarantined_with_its_reason_and_line(tmp_path, row, reason):
    good = [f"o{i},m{i},2025-01-0{i % 9 + 1},10,食品,paid" for i in range(1, 200)]
    text = HEADER + good[0] + "\n" + row + "\n" + "\n".join(good[1:]).replace("o1,", "o1x,") + "\n"
    report = ingest(
        {"orders": write(tmp_path, text)}, tmp_path / "out", as_of=pd.Timestamp("2025-02-01"), max_bad_share=0.05
    )
    counts = report["tables"]["orders"]
    assert counts["quarantined_by_reason"] == {reason: 1}
    assert counts["rows_kept"] + counts["rows_quarantined"] == counts["rows_read"] == 200
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine" / "orders.parquet")
    assert quarantine[c.QUARANTINE_REASON].tolist() == [reason]
    assert quarantine[c.QUARANTINE_ROW].tolist() == [3]  # header is line 1, the first good row line 2
    kept = open_dataset(tmp_path / "out").read("orders")
    assert kept.set_index("order_id").loc["o1", "member_id"] == "m1"  # the first of two duplicate ids is kept


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_file_read_in_chunks_gives_the_same_dataset_report_and_quarantine_as_whole(tmp_path, suffix):
    """Bad rows, a guest and duplicates whose first copy sits in an earlier chunk: read 7 rows at a time,
    the dataset, the report and the quarantine are those of one read of the whole file."""
    rows = [f"o{i},m{i % 11},2025-01-{i % 28 + 1:02d},{10 + i},食品,paid" for i in range(60)]
    rows[5] = "o5,m5,2025-13-45,10,食品,paid"  # bad date
    rows[20] = "o3,m9,2025-01-04,12,食品,paid"  # duplicate of a row of the first chunk
    rows[21] = "o5,m9,2025-01-04,12,食品,paid"  # same id as a bad row: the first good one, kept
    rows[40] = "o40,,2025-01-04,12,食品,paid"  # a guest
    rows[55] = "o21,m1,2025-01-09,ten,食品,paid"  # bad amount and an id seen before
    path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    if suffix == "parquet":
        pd.read_csv(path, dtype=str, keep_default_na=False).to_parquet(tmp_path / "orders.parquet")
        path = tmp_path / "orders.parquet"
    whole = ingest({"orders": path}, tmp_path / "whole", max_bad_share=0.5)
    chunked = ingest({"orders": path}, tmp_path / "chunked", max_bad_share=0.5, chunk_rows=7)
    assert chunked == whole
    assert whole["tables"]["orders"]["quarantined_by_reason"] == {
        "bad_amount": 1,
        "bad_date": 1,
        "duplicate_order_id": 1,
    }
    assert whole["tables"]["orders"]["guest"] == 1
    a, b = (open_dataset(tmp_path / name).read("orders").sort_values("order_id") for name in ("whole", "chunked"))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    quarantines = [pd.read_parquet(tmp_path / name / "quarantine" / "orders.parquet") for name in ("whole", "chunked")]
    pd.testing.assert_frame_equal(*quarantines)
    first = 2 if suffix == "csv" else 1  # a CSV's header is line 1; a Parquet file's rows count from 1
    assert quarantines[0][c.QUARANTINE_ROW].tolist() == [first + 5, first + 20, first + 55]


def test_identical_rows_without_order_id_are_all_kept_as_repeat_purchases(tmp_path):
    text = "member_id,ordered_at,amount\nm1,2025-01-02,10\nm1,2025-01-02,10\n"
    report = ingest({"orders": write(tmp_path, text)}, tmp_path / "out")
    assert report["tables"]["orders"]["rows_kept"] == 2
    ids = sorted(open_dataset(tmp_path / "out").read("orders")["order_id"])
    assert ids == ["orders.csv:2", "orders.csv:3"]


def test_too_many_bad_rows_fail_and_write_nothing(tmp_path):
    text = HEADER + "o1,m1,2025-01-02,10,食品,paid\no2,m2,not-a-date,10,食品,paid\n"
    with pytest.raises(IngestRejected, match="max_bad_share") as info:
        ingest({"orders": write(tmp_path, text)}, tmp_path / "out")
    assert "line 3: bad_date" in info.value.details
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.csv"]  # not --out, nor beside it


def test_a_missing_required_column_names_it_and_the_columns_found(tmp_path):
    text = "order_id,member_id,amount\no1,m1,10\n"
    with pytest.raises(RetainError, match=r"ordered_at.*\['order_id', 'member_id', 'amount'\]"):
        ingest({"orders": write(tmp_path, text)}, tmp_path / "out")


def test_an_orders_file_with_no_rows_is_an_error(tmp_path):
    with pytest.raises(RetainError, match="no rows"):
        ingest({"orders": write(tmp_path, HEADER)}, tmp_path / "out")


def test_an_orders_file_of_guests_only_is_an_error_and_writes_nothing(tmp_path):
    text = HEADER + "o1,,2025-01-02,10,食品,paid\no2,,2025-01-03,12,食品,paid\n"
    with pytest.raises(RetainError, match=r"No order of .*orders.csv was kept \(every row is a guest's"):
        ingest({"orders": write(tmp_path, text)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_in_the_wrong_encoding_is_named(tmp_path):
    path = write(tmp_path, HEADER + "o1,m1,2025-01-02,10,家电3C,paid\n", encoding="gbk")
    with pytest.raises(RetainError, match=r"orders\.csv is not valid utf-8"):
        ingest({"orders": path}, tmp_path / "out")


def test_utf8_with_a_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path, "\ufeff" + HEADER + "o1,m1,2025-01-02,10,食品,paid\n")
    report = ingest({"orders": path}, tmp_path / "out")
    assert report["tables"]["orders"]["rows_kept"] == 1
    assert open_dataset(tmp_path / "out").read("orders")["category"].tolist() == ["食品"]


def test_events_of_members_without_orders_are_kept(tmp_path):
    orders = write(tmp_path, HEADER + "o1,m1,2025-01-02,10,食品,paid\n")
    events = write(tmp_path, "member_id,event_at,event_type\nm9,2025-01-01 10:00:00,view\n", name="events.csv")
    report = ingest({"orders": orders, "events": events}, tmp_path / "out")
    assert report["tables"]["events"]["rows_kept"] == 1


def test_the_cli_prints_one_sentence_and_exits_2_on_bad_input(tmp_path):
    text = HEADER + "o1,m1,2025-01-02,10,食品,paid\no2,m2,not-a-date,10,食品,paid\n"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "retain.cli",
            "ingest",
            "--orders",
            str(write(tmp_path, text)),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "line 3: bad_date" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 50.0% of the orders rows are bad")
    assert not (tmp_path / "out").exists()


def ingest_cli(tmp_path, out) -> subprocess.CompletedProcess:
    orders = write(tmp_path, HEADER + "o1,m1,2025-01-02,10,食品,paid\n")
    command = [sys.executable, "-m", "retain.cli", "ingest", "--orders", str(orders), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_ingest_never_replaces_a_folder_it_did_not_write(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("mine", encoding="utf-8")
    result = ingest_cli(tmp_path, project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a retain dataset" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (project / "notes.txt").read_text(encoding="utf-8") == "mine" and (project / "src").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.csv", "project"]  # no temp folder left


def test_ingest_refuses_a_symbolic_link_and_leaves_its_target(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "dataset.json").write_text("{}", encoding="utf-8")  # even one that looks like a dataset
    (target / "keep.txt").write_text("keep", encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    result = ingest_cli(tmp_path, link)
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert link.is_symlink() and (target / "keep.txt").read_text(encoding="utf-8") == "keep"


@pytest.mark.slow
def test_ingest_replaces_its_own_dataset_and_fills_an_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ingest_cli(tmp_path, empty).returncode == 0 and (empty / "dataset.json").exists()
    again = ingest_cli(tmp_path, empty)  # now a retain dataset: replaced
    assert again.returncode == 0 and open_dataset(empty).has("orders")


def test_suppressions_come_in_from_the_command_line(tmp_path):
    """A shop's opt-outs and legal holds load with `--suppressions`; an unknown reason is quarantined."""
    from typer.testing import CliRunner

    from retain.cli import app
    from retain.dataset import open_dataset

    orders = write(tmp_path, "order_id,member_id,ordered_at,amount\no1,a,2025-01-02,10\no2,b,2025-01-03,20\n")
    rows = ["member_id,reason,until", "a,opted_out,", "b,legal_hold,2025-06-01"]
    rows += [f"m{i},complaint," for i in range(200)] + ["c,spam,"]  # one bad row of 203: under the limit
    suppressions = write(tmp_path, "\n".join(rows) + "\n", name="suppressions.csv")
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app, ["ingest", "--orders", str(orders), "--suppressions", str(suppressions), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    kept = open_dataset(out).read("suppressions")
    assert len(kept) == 202 and set(kept[c.REASON]) == {"opted_out", "legal_hold", "complaint"}
    quarantined = pd.read_parquet(out / "quarantine" / "suppressions.parquet")
    assert list(quarantined[c.MEMBER_ID]) == ["c"] and list(quarantined[c.QUARANTINE_REASON]) == ["bad_value"]
