"""`retain readout`: contacted against control for every past campaign, on hand-built offers."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset, orders_frame
from typer.testing import CliRunner

from retain import readout
from retain.cli import app


def offers_frame(rows: list[tuple]) -> pd.DataFrame:
    """Offers from (offer_id, member_id, sent_at, treated, value, redeemed_at) tuples, all win-back coupons."""
    records = [
        {
            "offer_id": offer_id,
            "member_id": member,
            "sent_at": pd.Timestamp(sent),
            "offer_type": "winback_coupon",
            "treated": treated,
            "value": value,
            "redeemed_at": pd.Timestamp(redeemed) if redeemed else pd.NaT,
        }
        for offer_id, member, sent, treated, value, redeemed in rows
    ]
    return pd.DataFrame(records)


@pytest.fixture
def shop(tmp_path):
    """Campaign of 2025-03-01: t0..t29 contacted, c0..c29 held out. t0 redeems a 10-yuan coupon and buys
    200 + 100, t1 buys 60 one day after the 14-day window (not counted), c0 buys 100, c1's order is
    refunded (not counted). Campaign of 2025-04-01: e contacted, nobody held out. Campaign of 2025-04-15:
    two members each side. Campaign of 2025-05-25: its window has not closed by 2025-06-01."""
    contacted, held_out = [f"t{i}" for i in range(30)], [f"c{i}" for i in range(30)]
    rows = [(m, "2025-01-05", 50) for m in [*contacted, *held_out, "e", "x1", "x2", "y1", "y2"]]
    rows += [
        ("t0", "2025-03-03", 200),
        ("t0", "2025-03-10", 100),
        ("t1", "2025-03-15", 60),
        ("c0", "2025-03-05", 100),
        ("c1", "2025-03-06", 80, "食品", "refunded", "2025-03-20"),
        ("e", "2025-04-02", 40),
        ("x1", "2025-04-16", 100),
    ]
    offers = [(f"o-{m}", m, "2025-03-01", True, 10.0, "2025-03-03" if m == "t0" else None) for m in contacted]
    offers += [(f"o-{m}", m, "2025-03-01", False, 10.0, None) for m in held_out]
    offers += [("o-e", "e", "2025-04-01", True, 30.0, "2025-04-02")]
    offers += [(f"o-{m}", m, "2025-04-15", m.startswith("x"), 10.0, None) for m in ("x1", "x2", "y1", "y2")]
    offers += [("o-late", "t2", "2025-05-25", True, 10.0, None)]
    tables = {"orders": orders_frame(rows), "offers": offers_frame(offers)}
    return make_dataset(tmp_path, tables, "2025-06-01")


def test_the_readout_of_a_campaign_is_contacted_minus_control(shop, config):
    outcomes = readout.offer_outcomes(shop, 14)
    assert "o-late" not in set(outcomes["offer_id"]) and len(outcomes) == 65  # its window is still open
    predicted = pd.Series({"o-t0": 70.0, "o-t1": 5.0, "o-c0": 99.0})  # a held-out member's value is not counted
    first, second, third = readout.readout(outcomes, config, 14, predicted)
    rate, send = config.decisions.margin_rate, config.winback.send_cost
    assert (first["contacted"], first["control"]) == (30, 30)
    assert first["orders_per_contacted"] == pytest.approx(2 / 30) and first["orders_per_control"] == pytest.approx(
        1 / 30
    )
    assert first["margin_per_contacted"] == pytest.approx(300 * rate / 30)  # t1's order is late
    assert first["margin_per_control"] == pytest.approx(100 * rate / 30)  # c1's was refunded
    assert first["incremental_margin"] == pytest.approx(200 * rate)  # (300 - 100) / 30 per member x 30
    assert first["discount_cost"] == 10.0 and first["send_cost"] == pytest.approx(30 * send)
    assert first["net_profit"] == pytest.approx(200 * rate - 10 - 30 * send)
    assert first["roi"] == pytest.approx(first["net_profit"] / (10 + 30 * send))
    assert first["predicted_value"] == 75.0
    # Welch: each group one member with a margin and 29 without; the total's half-width is 30 members' worth
    contacted, control = np.r_[300 * rate, np.zeros(29)], np.r_[100 * rate, np.zeros(29)]
    half = 1.959963984540054 * np.sqrt(contacted.var(ddof=1) / 30 + control.var(ddof=1) / 30) * 30
    assert first["ci_high"] - first["incremental_margin"] == pytest.approx(half)
    assert first["incremental_margin"] - first["ci_low"] == pytest.approx(half)

    assert second["sent_day"] == "2025-04-01" and second["control"] == 0
    assert second["incremental_margin"] is None and second["note"] == readout.NO_CONTROL
    assert second["discount_cost"] == 30.0 and second["predicted_value"] is None
    assert third["sent_day"] == "2025-04-15" and (third["contacted"], third["control"]) == (2, 2)
    assert third["incremental_margin"] is None and third["note"] == readout.TOO_FEW
    assert third["orders_per_contacted"] == 0.5  # what the groups did is still shown


def test_retain_readout_prints_every_campaign_and_writes_json(shop, config, tmp_path):
    out = tmp_path / "readout.json"
    result = CliRunner().invoke(app, ["readout", "--data", str(shop.path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "no control group, no estimate" in result.output
    doc = json.loads(out.read_text())
    assert [entry["sent_day"] for entry in doc["campaigns"]] == ["2025-03-01", "2025-04-01", "2025-04-15"]

    later = CliRunner().invoke(app, ["readout", "--data", str(shop.path), "--since", "2025-03-15", "--json", str(out)])
    assert [entry["sent_day"] for entry in json.loads(out.read_text())["campaigns"]] == ["2025-04-01", "2025-04-15"], (
        later.output
    )
    bad = subprocess.run(
        [sys.executable, "-m", "retain.cli", "readout", "--data", str(shop.path), "--since", "March"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--since must be a date" in bad.stderr and "Traceback" not in bad.stderr


def test_offers_without_value_or_redemption_columns_read_out_with_no_discount(tmp_path):
    """A shop's send log may hold neither the coupon's value nor its redemption: the discount is then 0."""
    orders = orders_frame([("a", "2025-01-05", 50), ("a", "2025-03-03", 80)])
    offers = offers_frame([("o-a", "a", "2025-03-01", True, 10.0, "2025-03-03")]).drop(columns=["value", "redeemed_at"])
    ds = make_dataset(tmp_path, {"orders": orders, "offers": offers}, "2025-06-01")
    (row,) = readout.offer_outcomes(ds, 14).to_dict("records")
    assert (row["orders"], row["amount"], row["discount"]) == (1, 80.0, 0)
