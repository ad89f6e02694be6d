"""Is the model still right? The realised accuracy of past exports, drift since training, and alerts.

`retain monitor` reads back what `retain export` kept for every day (`scores.parquet`: each member's
churn risk and repurchase probability; `summary.json`: the model versions that scored them):

- **realised**: for a day whose outcome window has closed in the data (day + the task's horizon <=
  observed_until), the labels of that window against the day's scores: ROC-AUC, PR-AUC, ECE and the mean
  predicted against the observed rate, beside the figures the version was promoted with (its MLflow tags);
- **estimated**: for a day whose window is still open, what the calibrated probabilities alone say —
  the expected positive rate (their mean) and the expected ROC-AUC (`expected_roc_auc`, the way NannyML's
  CBPE estimates it); marked as estimated;
- **drift**: the population stability index (`retain.drift`) of every input of each champion and of its
  score, between the members it went live on (the reference `make train` stores) and the members as of
  the end of the data (or `--as-of`), the score computed on the reference's calendar;
- **volume**: the rows a day of each feed (events, orders) lately against before the champions were
  trained (`retain.drift.volume`: medians, promotion days left out), so a broken feed shows within days,
  before the inputs built on it (a 30-day count) have moved far;
- **alerts**: on the realised lists scored by the version serving now, a realised ECE above
  `monitor.max_ece` (and the promotion figure) or a ROC-AUC more than `monitor.max_auc_drop` below the
  promotion figure (the latest such list named; the alert holds until the model is replaced); a PSI
  above `monitor.max_psi` for a score or one of the `monitor.top_features` most important inputs; a feed's
  rows a day more than `monitor.max_volume_ratio` times above or below what they were. One sentence each;
  the command exits ALERT_EXIT when any fires.

A day whose `scores.parquet` is missing or unreadable is skipped with a sentence saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table
from sklearn.metrics import average_precision_score, roc_auc_score

from retain import drift, labels, reason_text
from retain import features as feature_builder
from retain.config import Config
from retain.dataset import Dataset
from retain.evaluation import expected_calibration_error
from retain.models import BTYD_COLUMNS
from retain.registry import Registry, model_name
from retain.scoring import MODELS, Scorer

ALERT_EXIT = 4
SCORE_COLUMN = {"churn": "churn_risk", "repurchase": "repurchase_prob"}
REALISED, ESTIMATED = "realised", "estimated"


def expected_roc_auc(p: np.ndarray) -> float:
    """The ROC-AUC that calibrated probabilities `p` expect of themselves (confidence-based performance
    estimation): each member is a positive with probability p and a negative with 1 - p, so

        E[AUC] ~ sum over pairs i, j (i != j) of p_i (1 - p_j) [p_i > p_j]  (ties count half)
                 / sum over pairs i, j (i != j) of p_i (1 - p_j)

    computed in one pass over the members sorted by p."""
    p = np.sort(np.asarray(p, dtype=float))
    p = p[~np.isnan(p)]
    if len(p) < 2:
        return float("nan")
    _, starts = np.unique(p, return_index=True)
    neg = np.add.reduceat(1.0 - p, starts)  # expected negatives at each distinct score
    pos = np.add.reduceat(p, starts)
    below = np.cumsum(neg) - neg  # expected negatives strictly below each score
    ties = pos * neg - np.add.reduceat(p * (1.0 - p), starts)  # pairs of different members at one score
    concordant = float(np.sum(pos * below) + 0.5 * np.sum(ties))
    pairs = float(p.sum() * (1.0 - p).sum() - np.sum(p * (1.0 - p)))
    return concordant / pairs if pairs > 0 else float("nan")


@dataclass
class ExportDay:
    day: pd.Timestamp
    scores: pd.DataFrame  # index member_id; churn_risk, repurchase_prob
    versions: dict[str, str]  # registered model name -> version


def export_days(exports: Path, until: pd.Timestamp | None = None) -> tuple[list[ExportDay], list[str]]:
    """Every export day under `exports` (folders named YYYY-MM-DD, up to `until` if given) with its scores
    and model versions, and a sentence for each day skipped (no or unreadable scores.parquet or summary.json)."""
    days, skipped = [], []
    folders = sorted(p for p in Path(exports).glob("????-??-??") if p.is_dir()) if Path(exports).is_dir() else []
    for folder in folders:
        try:
            day = pd.Timestamp(folder.name)
        except ValueError:
            continue
        if until is not None and day > until:  # after the day monitored: not read
            continue
        absent = [name for name in ("scores.parquet", "summary.json") if not (folder / name).is_file()]
        if absent:
            skipped.append(f"{folder.name}: skipped, {absent[0]} is missing")
            continue
        try:
            table = pq.read_table(folder / "scores.parquet", columns=["member_id", *SCORE_COLUMN.values()])
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            versions = {str(k): str(v) for k, v in summary["model_versions"].items()}
        except (pa.ArrowException, OSError, ValueError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            skipped.append(f"{folder.name}: skipped, its scores or summary cannot be read ({type(exc).__name__})")
            continue
        days.append(ExportDay(day, table.to_pandas().set_index("member_id"), versions))
    return days, skipped


def accuracy(
    dataset: Dataset, config: Config, export: ExportDay, promoted: dict[str, dict], as_of: pd.Timestamp | None = None
) -> list[dict]:
    """One export day, per task: realised figures if its window has closed by `as_of` (default: the end of the
    data), else the estimate. `promoted`: task -> the figures its version was promoted with."""
    until = min(as_of or dataset.observed_until, dataset.observed_until)
    rows = {}
    for task, column in SCORE_COLUMN.items():
        p = export.scores[column].to_numpy(dtype=float)
        closes = export.day + pd.Timedelta(days=config.labels.horizons[task])
        rows[task] = {
            "day": export.day.date().isoformat(),
            "task": task,
            "version": export.versions.get(model_name(task), ""),
            "members": len(p),
            "window_closes": closes.date().isoformat(),
            "status": REALISED if closes <= until else ESTIMATED,
            "mean_predicted": float(np.nanmean(p)) if len(p) else float("nan"),
            "expected_roc_auc": expected_roc_auc(p),
            "promoted_roc_auc": promoted.get(task, {}).get("roc_auc", float("nan")),
            "promoted_ece": promoted.get(task, {}).get("ece", float("nan")),
        }
    closed = {task: config.labels.horizons[task] for task, row in rows.items() if row["status"] == REALISED}
    if closed:  # the labels of every closed task from one pass over the orders, aligned to the scores once
        y = labels.build_tasks(dataset, export.day, closed)
        if not y.index.equals(export.scores.index):  # the same members, sorted, unless the data changed since
            y = y.reindex(export.scores.index)
        known = y.notna().all(axis=1).to_numpy()  # members scored that day and in the label population
        for task in closed:
            y_known = y[task].to_numpy()[known].astype(int)
            p_known = export.scores[SCORE_COLUMN[task]].to_numpy(dtype=float)[known]
            rows[task] |= {
                "members_labelled": int(known.sum()),
                "observed_rate": float(y_known.mean()) if known.any() else float("nan"),
                **realised_metrics(y_known, p_known),
            }
    return list(rows.values())


def realised_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC-AUC, PR-AUC and ECE of probabilities `p` against outcomes `y` (NaN where one label only)."""
    both = len(y) > 0 and 0 < y.sum() < len(y)
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "ece": expected_calibration_error(y, p) if len(y) else float("nan"),
    }


def promoted_figures(registry: Registry, task: str, version: str, cache: dict) -> dict:
    """The held-out figures a version was promoted with (its `retain.metric.*` tags)."""
    if (task, version) not in cache:
        found = registry.version(task, version) if version else None
        tags = found.tags if found else {}
        cache[(task, version)] = {
            key: float(tags[f"retain.metric.{key}"]) for key in ("roc_auc", "ece") if f"retain.metric.{key}" in tags
        }
    return cache[(task, version)]


def drift_report(
    dataset: Dataset, config: Config, registry: Registry, scorer: Scorer, as_of: pd.Timestamp
) -> tuple[list[dict], list[str]]:
    """Per task, the PSI of the champion's score and inputs between its training reference and the members as
    of `as_of`, largest first; and a sentence per champion without a stored reference."""
    features = feature_builder.build(dataset, as_of, config.data)
    reports, notes = [], []
    language, categories = config.decisions.language, config.data.categories
    for task in SCORE_COLUMN:
        model, version = scorer.model(task), scorer.versions.get(model_name(task), "")
        found = registry.version(task, version)
        reference = registry.load_dict(found.run_id, drift.REFERENCE_FILE) if found and found.run_id else None
        if reference is None:
            notes.append(
                f"{task} model v{version}: no training reference stored (trained before retain monitor); "
                "retrain with make train to measure drift"
            )
            continue
        if "as_of" not in reference:
            notes.append(
                f"{task} model v{version}: its training day is not stored (trained by an earlier retain), so the "
                "feeds' rows a day are not checked against it; retrain with make train to check them"
            )
        inputs = scorer.model_input(features, as_of, task).reindex(columns=model.feature_names)
        # today's members on the reference's calendar: the score's drift is the members', not the season's
        score = model.predict(inputs.assign(**reference.get("calendar", {})))
        top = reference["importance"][: config.monitor.top_features]
        rows = [{"feature": drift.SCORE, "label": f"{task} score", "psi": drift.psi(reference[drift.SCORE], score)}]
        for name, bins in reference["features"].items():
            values = (
                inputs[name].to_numpy(dtype=float, na_value=np.nan) if name in inputs else np.full(len(inputs), np.nan)
            )
            rows.append(
                {
                    "feature": name,
                    "label": reason_text.label(name, language, categories),
                    "psi": drift.psi(bins, values),
                }
            )
        for row in rows:
            row["top"] = row["feature"] == drift.SCORE or row["feature"] in top
        rows.sort(key=lambda row: -row["psi"])
        reports.append(
            {
                "task": task,
                "version": version,
                "as_of": as_of.date().isoformat(),
                "trained": reference.get("as_of"),  # None: stored by a retain before the feed check
                "reference_members": reference["members"],
                "psi": rows,
            }
        )
    return reports, notes


def volume_report(dataset: Dataset, config: Config, drifts: list[dict], as_of: pd.Timestamp) -> list[dict]:
    """Per feed the dataset has (`drift.VOLUME_TABLES`) and day the champions were trained on: the rows a
    day of the last days before `as_of` against the days before training (`drift.volume`), and the inputs
    built on the feed, those that moved most since training first."""
    trained: dict[str, list[dict]] = {}
    for report in (report for report in drifts if report["trained"]):
        trained.setdefault(report["trained"], []).append(report)
    if not trained:  # no champion with a training reference
        return []
    first = min(pd.Timestamp(day) for day in trained) - pd.Timedelta(days=drift.VOLUME_REFERENCE_DAYS)
    if first.normalize() >= as_of.normalize():  # monitoring a day long before the training
        return []
    rows = []
    for table in (t for t in drift.VOLUME_TABLES if dataset.has(t)):
        daily = drift.daily_rows(dataset, table, first, as_of)
        fed = feature_builder.columns_from(table, config.data) | (set(BTYD_COLUMNS) if table == "orders" else set())
        for day, reports in trained.items():
            found = drift.volume(daily, pd.Timestamp(day), config.data.promotion_windows)
            if found is None:
                continue
            moved = [row for report in reports for row in report["psi"] if row["feature"] in fed]
            moved.sort(key=lambda row: -row["psi"])
            inputs = list(dict.fromkeys(row["label"] for row in moved))
            rows.append(
                {"table": table, "trained": day, "tasks": [r["task"] for r in reports], **found, "inputs": inputs}
            )
    return rows


def alerts(
    days: list[dict],
    drifts: list[dict],
    config: Config,
    serving: dict[str, str] | None = None,
    volumes: list[dict] = (),
) -> list[str]:
    """One sentence per threshold crossed, saying what to do. The accuracy alerts read the realised lists
    scored by the version serving now (`serving`: task -> version; None: any version) and name the latest
    list that crossed each threshold: an alert holds until the model is replaced (a list scored by a replaced
    version is history)."""
    m = config.monitor
    crossed: dict[tuple[str, str], str] = {}  # (task, kind) -> the sentence of the latest list crossing it
    for row in days:  # in day order: a later list's sentence replaces an earlier one's
        if row["status"] != REALISED or (serving is not None and row["version"] != serving.get(row["task"])):
            continue
        name = f"{row['task']} model v{row['version']}"
        promoted = "" if np.isnan(row["promoted_ece"]) else f" (promoted at {row['promoted_ece']:.3f})"
        # worse than the limit and than what the version was promoted with (a model let through at 0.09 as the
        # first of a shop is not stale at 0.06)
        if row["ece"] > max(m.max_ece, np.nan_to_num(row["promoted_ece"], nan=0.0)):
            crossed[(row["task"], "ece")] = (
                f"{name}: realised ECE {row['ece']:.3f} on the {row['day']} list{promoted}, above "
                f"monitor.max_ece {m.max_ece} — retrain with make train"
            )
        if row["roc_auc"] < row["promoted_roc_auc"] - m.max_auc_drop:
            crossed[(row["task"], "roc_auc")] = (
                f"{name}: realised ROC-AUC {row['roc_auc']:.3f} on the {row['day']} list, "
                f"{row['promoted_roc_auc'] - row['roc_auc']:.3f} below the {row['promoted_roc_auc']:.3f} it was "
                f"promoted at (limit {m.max_auc_drop}) — retrain with make train"
            )
    out = list(crossed.values())
    for report in drifts:
        shifted = [row for row in report["psi"] if row["top"] and row["psi"] > m.max_psi]
        if shifted:
            named = ", ".join(f"{row['label']} (PSI {row['psi']:.2f})" for row in shifted[:3])
            out.append(
                f"{report['task']} model v{report['version']}: members have shifted since training as of "
                f"{report['as_of']}: {named}, above monitor.max_psi {m.max_psi} — check the data, then retrain "
                "with make train"
            )
    feeds = []  # first: a broken feed shows here before the inputs built on it have moved far
    for row in (row for row in volumes if volume_changed(row, m.max_volume_ratio)):
        models = " and ".join(row["tasks"]) + (" models" if len(row["tasks"]) > 1 else " model")
        built = f"; the inputs built on it that moved most: {', '.join(row['inputs'][:3])}" if row["inputs"] else ""
        feeds.append(
            f"{row['table']}: {row['recent_per_day']:,.0f} rows a day from {row['recent_first']} to "
            f"{row['recent_last']} (median, promotion days left out), {row['ratio']:.2f}x the "
            f"{row['reference_per_day']:,.0f} a day before the {models} trained on {row['trained']} (limit "
            f"monitor.max_volume_ratio {m.max_volume_ratio}) — check the {row['table']} feed before trusting "
            f"the scores{built}; retrain with make train once it is right"
        )
    return feeds + out


def volume_changed(row: dict, max_ratio: float) -> bool:
    """A feed's rows a day more than `max_ratio` times above or below what they were before training."""
    return not 1 / max_ratio <= row["ratio"] <= max_ratio


def run(dataset: Dataset, config: Config, registry: Registry, exports: Path, as_of: pd.Timestamp | None = None) -> dict:
    """Everything `retain monitor` reports, as the JSON it writes (`alerts` empty when all holds). `as_of`:
    monitor as it would have on that day (exports up to it, windows closed by it, drift as of it); default
    the end of the data."""
    as_of = dataset.observed_until if as_of is None else min(pd.Timestamp(as_of), dataset.observed_until)
    missing = registry.missing_champions(MODELS)
    scorer = Scorer.from_registry(registry, config) if not missing else None
    days, notes = export_days(exports, as_of)
    cache: dict = {}
    figures = [
        row
        for export in days
        for row in accuracy(
            dataset,
            config,
            export,
            {
                task: promoted_figures(registry, task, export.versions.get(model_name(task), ""), cache)
                for task in SCORE_COLUMN
            },
            as_of,
        )
    ]
    drifts, drift_notes = drift_report(dataset, config, registry, scorer, as_of) if scorer else ([], [])
    volumes = volume_report(dataset, config, drifts, as_of)
    serving = {task: scorer.versions.get(model_name(task), "") for task in SCORE_COLUMN} if scorer else None
    if missing:
        drift_notes.append(f"no champion for {', '.join(missing)}: no drift measured; run make train")
    return _without_nan(
        {
            "dataset": str(dataset.path),
            "observed_until": dataset.observed_until.date().isoformat(),
            "as_of": as_of.date().isoformat(),
            "exports": str(exports),
            "days": figures,
            "drift": drifts,
            "volume": volumes,
            "notes": notes + drift_notes,
            "alerts": alerts(figures, drifts, config, serving, volumes),
        }
    )


def _without_nan(value):
    """The document with NaN as null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    return None if isinstance(value, float) and np.isnan(value) else value


def _shown(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def accuracy_table(days: list[dict]) -> Table:
    """Realised (window closed) or estimated (open) accuracy per export day and task."""
    table = Table(
        "day",
        "task",
        "version",
        "figures",
        "ROC-AUC",
        "promoted",
        "PR-AUC",
        "ECE",
        "mean predicted",
        "observed",
        title="accuracy of past exports",
    )
    for row in days:
        realised = row["status"] == REALISED
        table.add_row(
            row["day"],
            row["task"],
            f"v{row['version']}",
            REALISED if realised else f"{ESTIMATED} (window closes {row['window_closes']})",
            _shown(row.get("roc_auc") if realised else row["expected_roc_auc"]),
            _shown(row["promoted_roc_auc"]),
            _shown(row.get("pr_auc")),
            _shown(row.get("ece")),
            _shown(row["mean_predicted"]),
            _shown(row.get("observed_rate")),
        )
    return table


def volume_table(volumes: list[dict], max_ratio: float) -> Table:
    """Each feed's rows a day lately against before training."""
    table = Table(
        "feed",
        "trained",
        "rows a day before",
        "lately",
        "days",
        "ratio",
        "alerts",
        title="rows a day of the feeds (median, promotion days left out)",
    )
    for row in volumes:
        table.add_row(
            row["table"],
            row["trained"],
            f"{row['reference_per_day']:,.0f}",
            f"{row['recent_per_day']:,.0f}",
            f"{row['recent_first']} to {row['recent_last']}",
            f"{row['ratio']:.2f}x",
            "yes" if volume_changed(row, max_ratio) else "",
        )
    return table


def drift_table(report: dict, max_psi: float, rows: int = 8) -> Table:
    """The score and the inputs that moved most since training (PSI), largest first."""
    table = Table(
        "input",
        "PSI",
        "alerts",
        title=f"{report['task']} model v{report['version']}: drift since training, as of {report['as_of']}",
    )
    for row in report["psi"][:rows]:
        alerting = row["top"] and row["psi"] is not None and row["psi"] > max_psi
        table.add_row(
            row["label"], _shown(row["psi"]), "yes" if alerting else ("" if row["top"] else "(not a top input)")
        )
    return table
