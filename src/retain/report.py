"""The export's one-page report: what the list holds and why, as pictures a CRM lead reads in a minute.

Static PNGs embedded in the HTML (base64): it opens offline, from a mail attachment or a file share.
"""

from __future__ import annotations

import base64
import html as html_text
import io
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from retain import decisions  # noqa: E402
from retain.config import Config  # noqa: E402

TOP_ROWS = 20


def png(fig: plt.Figure) -> str:
    """The figure as an <img> with the PNG inline; no timestamp in the file, so the bytes repeat."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def risk_distribution(scored: pd.DataFrame, config: Config) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(scored["churn_risk"], bins=50, range=(0, 1), color="#4c72b0")
    d = config.decisions
    for threshold, name in (
        (d.churn_threshold, "at risk"),
        (d.sleeping_threshold, "sleeping"),
        (d.lost_threshold, "lost"),
    ):
        ax.axvline(threshold, color="grey", linestyle=":")
        ax.text(threshold, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=8, va="top")
    ax.set(xlabel="churn risk", ylabel="members", title=f"Churn risk of all {len(scored):,} members")
    fig.tight_layout()
    return fig


def segment_action(at_risk: pd.DataFrame) -> plt.Figure:
    table = pd.crosstab(at_risk["segment"], at_risk["action"]) if len(at_risk) else pd.DataFrame()
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(table), 2) + 1.4))
    if table.empty:
        ax.text(0.5, 0.5, "nobody on today's list", ha="center")
        ax.set_axis_off()
    else:
        ax.imshow(table.to_numpy(), cmap="Blues", aspect="auto")
        ax.set_xticks(range(len(table.columns)), table.columns)
        ax.set_yticks(range(len(table.index)), table.index)
        for (i, j), count in np.ndenumerate(table.to_numpy()):
            ax.text(j, i, f"{count:,}", ha="center", va="center", fontsize=8)
        ax.set_title("Members to contact: segment x action")
    fig.tight_layout()
    return fig


def value_by_segment(at_risk: pd.DataFrame, currency: str) -> plt.Figure:
    totals = at_risk.groupby("segment")["expected_value"].sum().sort_values()
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(totals), 2) + 1.2))
    ax.barh(totals.index, totals.to_numpy(), color="#55a868")
    ax.set(xlabel=f"expected value ({currency})", title="Expected value of the list by segment")
    fig.tight_layout()
    return fig


def value_against_budget(scored: pd.DataFrame, budget: float, currency: str) -> plt.Figure:
    """Cumulative expected value against cumulative cost, members in the policy's order: what a larger
    or smaller budget would buy (contact rules and the control group left out)."""
    worth = scored[(scored["action"] != decisions.NONE) & (scored["expected_value"] > 0)]
    ev, cost = worth["expected_value"].to_numpy(), worth["cost"].to_numpy()
    ordered = worth.iloc[decisions.ranked(ev, cost, worth.index.to_numpy())]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(ordered["cost"].cumsum(), ordered["expected_value"].cumsum(), color="#c44e52")
    ax.axvline(budget, color="grey", linestyle=":", label=f"daily budget {budget:,.0f}")
    ax.set(xlabel=f"budget ({currency})", ylabel=f"expected value ({currency})", title="Expected value against budget")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def calibration(tags: dict[str, dict[str, str]]) -> plt.Figure:
    """The champions' calibration on their held-out cutoff (stored with the model by the training job)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for task in ("churn", "repurchase"):
        table = json.loads((tags.get(task) or {}).get("retain.calibration", "[]"))
        if table:
            ax.plot([row[0] for row in table], [row[1] for row in table], marker="o", label=task)
    ax.set(
        xlabel="predicted", ylabel="observed", title="Calibration (last held-out backtest)", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def campaign_readout(campaigns: list[dict], currency: str) -> plt.Figure:
    """Each past campaign's incremental margin with its 95% interval, and its net profit after the
    discounts and send costs (`retain.readout`); campaigns without an estimate are left out."""
    read = [entry for entry in campaigns if entry["incremental_margin"] is not None]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if not read:
        ax.text(0.5, 0.5, "no past campaign with a control group to read out", ha="center")
        ax.set_axis_off()
        return fig
    x = np.arange(len(read))
    margin = np.array([entry["incremental_margin"] for entry in read])
    low = margin - np.array([entry["ci_low"] for entry in read])
    high = np.array([entry["ci_high"] for entry in read]) - margin
    ax.errorbar(x, margin, yerr=[low, high], fmt="o", color="#4c72b0", capsize=3, label="incremental margin (95%)")
    ax.plot(x, [entry["net_profit"] for entry in read], "s", color="#c44e52", label="net profit after costs")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(x, [entry["sent_day"][2:] for entry in read], rotation=60, fontsize=7)
    window = read[0]["window_days"]
    ax.set(ylabel=currency, title=f"Did past campaigns work? Contacted minus held out, {window} days after sending")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def readout_rows(campaigns: list[dict], currency: str, latest: int = 6) -> str:
    """The latest campaigns as an HTML table, in words a CRM lead reads."""
    if not campaigns:
        return "<p>No past campaign with a closed response window in the offers table.</p>"
    rows = []
    for entry in campaigns[-latest:]:
        if entry["incremental_margin"] is None:
            verdict = entry["note"]
        else:
            low, high = entry["ci_low"], entry["ci_high"]
            verdict = "worked" if low > 0 else ("lost margin" if high < 0 else "no clear effect")
            verdict += f": {entry['incremental_margin']:,.0f} {currency} ({low:,.0f} to {high:,.0f})"
        net = "—" if entry["net_profit"] is None else f"{entry['net_profit']:,.0f}"
        predicted = "—" if entry["predicted_value"] is None else f"{entry['predicted_value']:,.0f}"
        cells = (
            entry["sent_day"],
            entry["offer_type"],
            f"{entry['contacted']:,}",
            f"{entry['control']:,}",
            verdict,
            net,
            predicted,
        )
        rows.append("<tr>" + "".join(f"<td>{html_text.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    head = ("sent", "offer", "contacted", "held out", "incremental margin (95%)", "net profit", "predicted value")
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


def model_health(days: list[dict]) -> plt.Figure:
    """ROC-AUC of each past export over time: realised where its window closed (filled), estimated from
    the calibrated probabilities where it is open (hollow), against the figure the version was promoted with."""
    fig, ax = plt.subplots(figsize=(10, 3.4))
    columns = ["day", "task", "status", "roc_auc", "expected_roc_auc", "promoted_roc_auc"]
    frame = pd.DataFrame(days).reindex(columns=columns)  # no realised day yet: no roc_auc either
    for (task, rows), color in zip(frame.groupby("task"), ("#4c72b0", "#dd8452"), strict=False):
        day = pd.to_datetime(rows["day"])
        realised = rows["status"] == "realised"
        ax.plot(day[realised], rows.loc[realised, "roc_auc"], "o-", color=color, label=f"{task}: realised")
        ax.plot(
            day[~realised],
            rows.loc[~realised, "expected_roc_auc"],
            "o",
            mfc="none",
            color=color,
            label=f"{task}: estimated (window open)",
        )
        ax.plot(day, rows["promoted_roc_auc"], ":", color=color, label=f"{task}: at promotion")
    ax.set(ylabel="ROC-AUC", title="Are past scores still right? ROC-AUC of each export")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points, not over them
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def health_section(health: dict | None) -> str:
    """The "Model health" section from the latest `retain monitor` (its monitor.json beside the exports)."""
    if not health:
        return (
            "<p>No <code>retain monitor</code> run beside these exports yet: run it daily before the export "
            "(it exits 4 when an alert fires) to see here whether past scores held and whether members have "
            "shifted since training.</p>"
        )
    alerts = health.get("alerts") or []
    lines = "".join(f"<li>{html_text.escape(alert)}</li>" for alert in alerts) or "<li>none: every figure holds</li>"
    drift = "".join(
        f"<li>{html_text.escape(report['task'])} model v{html_text.escape(str(report['version']))}: "
        + ", ".join(
            f"{html_text.escape(row['label'])} (PSI {row['psi']:.2f})"
            for row in report["psi"][:3]
            if row["psi"] is not None
        )
        + "</li>"
        for report in health.get("drift", [])
    )
    feeds = "".join(
        f"<li>{html_text.escape(row['table'])}: {row['recent_per_day']:,.0f} rows a day from "
        f"{html_text.escape(row['recent_first'])} to {html_text.escape(row['recent_last'])}, "
        f"{row['ratio']:.2f}x the {row['reference_per_day']:,.0f} before training</li>"
        for row in health.get("volume", [])
    )
    picture = png(model_health(health["days"])) if health.get("days") else ""
    return (
        f"<p>From <code>retain monitor</code> as of {html_text.escape(str(health.get('as_of', '')))}. "
        f"Alerts:</p><ul>{lines}</ul>{picture}"
        f"<p>Moved most since training (population stability index; above 0.25: a shift the model has not seen):</p>"
        f"<ul>{drift}</ul>"
        + (f"<p>The feeds (median day, promotion days left out):</p><ul>{feeds}</ul>" if feeds else "")
    )


def html(
    tables: dict,
    scored: pd.DataFrame,
    summary: dict,
    scorer,
    config: Config,
    campaigns: list[dict] | None = None,
    health: dict | None = None,
) -> str:
    at_risk = tables["at_risk"]
    currency = summary["currency"]
    facts = [
        ("as of", summary["as_of"]),
        ("members scored", f"{summary['members_scored']:,}"),
        ("members to contact", f"{len(at_risk):,}"),
        ("control group (held out)", f"{summary['controls']:,}"),
        ("budget used", f"{summary['budget_used']:,.2f} of {summary['budget']:,.2f} {currency}"),
        ("expected value of the list", f"{summary['expected_value_total']:,.2f} {currency}"),
        ("coupon uplift model", summary["policy"]["uplift_model"]),
        ("what the expected value rests on", summary["policy"].get("uplift_basis", "")),
        ("models", ", ".join(f"{k} v{v}" for k, v in summary["model_versions"].items())),
    ]
    rows = "".join(f"<tr><th>{html_text.escape(k)}</th><td>{html_text.escape(str(v))}</td></tr>" for k, v in facts)
    top = at_risk.head(TOP_ROWS)[["member_id", "segment", "action", "offer_detail", "expected_value", "reason_1"]]
    pictures = [
        risk_distribution(scored, config),
        segment_action(at_risk),
        value_by_segment(at_risk, currency),
        value_against_budget(scored, config.winback.daily_budget, currency),
        calibration(scorer.tags or {}),
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>retain — at-risk list {summary["as_of"]}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{margin:8px;vertical-align:top}}</style></head>
<body><h1>At-risk members, {summary["as_of"]}</h1>
<table>{rows}</table>
<div>{"".join(png(fig) for fig in pictures)}</div>
<h2>Top {TOP_ROWS} of the list</h2>
{top.to_html(index=False, float_format=lambda v: f"{v:,.2f}", border=0)}
<h2>Did past campaigns work?</h2>
<p>Members contacted against members held out at random, paid orders in the window after sending
(<code>retain readout</code>; every campaign in readout.json).</p>
{png(campaign_readout(campaigns or [], currency))}
{readout_rows(campaigns or [], currency)}
<h2>Model health</h2>
{health_section(health)}
</body></html>
"""
