"""The daily export: `retain export --date D` scores every member as of D and writes `exports/D/`.

    at_risk.parquet, at_risk.csv  the members to contact today, highest expected value first
    controls.parquet              the held-out control group, with the action each would have had
    scores.parquet                every scored member: risk, repurchase, value, segment, action, status
    summary.json                  counts, budget used, expected value, the policy and the model versions
    report.html                   one page with pictures, readable offline
    MANIFEST.json                 the SHA-256 of each file above: what "the same content" means

Plus the day's scored snapshot in `serving.snapshot_dir`, so the service answers for the same day after
`/reload`.

Safe under a scheduler and on a shared volume:
- one export at a time per `--out` folder (an `flock` on `.retain-export.lock`; a second run is refused
  with `FolderInUse`, exit code 3);
- everything is written into a dot-prefixed folder inside `--out`, flushed to disk and renamed into place
  (a crash leaves no folder for D; the next run removes the leftovers, under the lock);
- the same date, data and models give byte-identical files (values rounded to 6 decimals, no timestamps);
  an export for D with different content, or whose files no longer match their digests in `MANIFEST.json`,
  is replaced only with `force`, which always rewrites (otherwise `ExportExists`, exit code 3); a folder
  for D that retain did not write is never replaced;
- files are written with `export.file_mode` (0640) in folders that only the owner and group can enter;
- the day's snapshot becomes the one the service serves only when it is at least as new as the one served
  now, or with `serve` (a back-dated export never moves the live service back in time);
- in at_risk.csv, a text cell that a spreadsheet would run as a formula starts with an apostrophe.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from retain import contact, decisions, files, readout, report, snapshot
from retain.config import Config
from retain.dataset import Dataset
from retain.engine import LocalEngine
from retain.errors import RetainError
from retain.scoring import MODELS, REASONS_PER_MEMBER, Scorer

MANIFEST = "MANIFEST.json"
LOCK_FILE = ".retain-export.lock"
LEFTOVER = re.compile(r"^\.\d{4}-\d{2}-\d{2}\.(tmp|old)-")  # the temporary folders of runs that crashed
# A text cell starting with one of these runs as a formula in a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LIST_COLUMNS = [
    "member_id",
    "segment",
    "churn_risk",
    "repurchase_prob",
    "action",
    "offer_detail",
    "expected_value",
    *(f"reason_{k}" for k in range(1, REASONS_PER_MEMBER + 1)),
    "model_versions",
    "offer_id",
    "cost",
    "value",
    "uplift_source",
]
SCORE_COLUMNS = ["churn_risk", "repurchase_prob", "value", "segment", "action", "offer_detail"]
SCORE_COLUMNS += ["expected_value", "cost", "status"]
DECIMALS = 6


class ExportExists(RetainError):
    """An export for the date exists with different content and --force was not given."""

    exit_code = 3


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    status: str  # "written", "unchanged" (the same content was there) or "replaced" (--force)
    summary: dict
    served_as_of: pd.Timestamp | None  # the snapshot day the service serves after this export


Step = Callable[[str], None]


def check_date(text: str | pd.Timestamp, dataset: Dataset, today: pd.Timestamp | None = None) -> pd.Timestamp:
    """The export date as a day; a date after the data's end or in the future is an error."""
    try:
        day = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise RetainError(f"--date {text!r} is not a date; write it as YYYY-MM-DD.") from None
    if day != day.normalize():
        raise RetainError(f"--date {text!r} must be a day (YYYY-MM-DD), without a time.")
    today = (today or pd.Timestamp.now()).normalize()
    if day > today:
        raise RetainError(f"--date {day.date()} is in the future (today is {today.date()}).")
    if day > dataset.observed_until:
        raise RetainError(
            f"--date {day.date()} is after the data's end ({dataset.observed_until.date()}): the members' "
            "behaviour up to that day is not in the dataset yet."
        )
    return day


def check_currency(dataset: Dataset, config: Config) -> None:
    """The money settings (coupon tiers, budget, send costs) are written in `data.currency`: an export of a
    dataset in another currency would price USD orders with CNY coupons, so it is refused."""
    currency = dataset.metadata.get("currency")
    if currency and currency != config.data.currency:
        raise RetainError(
            f"{dataset.path} is in {currency} but the money settings of the config (coupon tiers, budget, send "
            f"costs) are in {config.data.currency} (data.currency); write them in {currency} and set "
            f'data.currency = "{currency}" (or RETAIN_DATA_CURRENCY={currency}), then run again.'
        )


def run(
    dataset: Dataset,
    config: Config,
    registry,
    day: pd.Timestamp,
    out: Path,
    force: bool = False,
    step: Step = lambda message: None,
    engine=None,
    csv: bool = True,
    serve: bool = False,
) -> ExportResult:
    """Score, decide and write the export for `day` (already checked by `check_date`), with the features
    and scores computed by `engine` (retain.engine; None: DuckDB in this process). `serve`: make the
    day's snapshot the served one even when the service serves a newer day."""
    check_currency(dataset, config)
    mode = config.export.mode
    if not out.exists():
        out.mkdir(parents=True)
        files.restrict(out, mode)
    final = out / day.date().isoformat()
    busy = f"Another `retain export` is writing into {out} right now; wait for it to finish, then run again."
    with files.exclusive_lock(out / LOCK_FILE, busy):
        remove_leftovers(out)
        files.check_replaceable(final, MANIFEST, "retain export")
        step("loading the champion models")
        scorer = Scorer.from_registry(registry, config)
        engine = engine or LocalEngine(config)
        step(f"building features as of {day.date()} and scoring every member ({engine.kind} engine)")
        features, scored = engine.score(dataset, day, scorer)
        if features.empty:
            raise RetainError(f"No member has a paid order before {day.date()}; there is nobody to score.")
        step("applying contact rules and the budget")
        blocked = contact.blocked(dataset, day, scored["action"], config)
        scored["status"] = decisions.choose(scored, blocked, day, config)
        listed = scored["status"].isin([decisions.CONTACT, decisions.CONTROL]).to_numpy()
        step(f"explaining the {int(listed.sum()):,} members on the list")
        reasons = scorer.reasons(features[listed], day)
        tables = build_tables(scored, reasons, scorer.versions, day)
        summary = summarize(tables, scored, dataset, config, scorer, day)
        step("reading out the past campaigns")
        days = config.winback.response_days
        outcomes = readout.offer_outcomes(dataset, days, until=day)
        campaigns = readout.readout(outcomes, config, days, readout.predicted_values(out))

        step("writing the files")
        with files.staging_folder(final) as temp:
            page = report.html(tables, scored, summary, scorer, config, campaigns, latest_health(out))
            write_files(temp, tables, summary, page, campaigns, csv=csv)
            files.restrict(temp, mode)
            files.fsync_tree(temp)
            status = commit(temp, final, force)
        step("writing the day's snapshot for the service")
        frame = features.join(scored.drop(columns="status")).join(reasons)
        folder = Path(config.serving.snapshot_dir)
        snapshot.write(frame, day, scorer.versions, dataset.fingerprint, folder, file_mode=mode, serve=serve)
    return ExportResult(final, status, summary, snapshot.served_as_of(folder))


def latest_health(out: Path) -> dict | None:
    """The latest `retain monitor` figures beside the exports (its monitor.json), or None (none, or unreadable)."""
    try:
        return json.loads((out / "monitor.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_tables(scored: pd.DataFrame, reasons: pd.DataFrame, versions: dict[str, str], day) -> dict:
    """at_risk, controls and scores as frames with rounded values, in their final order."""
    versions_text = ";".join(f"{name}={version}" for name, version in sorted(versions.items()))
    listed = scored[scored["status"].isin([decisions.CONTACT, decisions.CONTROL])].join(reasons)
    listed = listed.assign(
        model_versions=versions_text,
        offer_id=[f"{day:%Y%m%d}-{member_id}" for member_id in listed.index],
    )
    listed = rounded(listed.reset_index())
    listed = listed.sort_values(["expected_value", "member_id"], ascending=[False, True], kind="stable")
    structured = [f"reason_{k}_{part}" for k in range(1, REASONS_PER_MEMBER + 1) for part in ("feature", "value")]
    structured += [f"reason_{k}_direction" for k in range(1, REASONS_PER_MEMBER + 1)]
    at_risk = listed[listed["status"] == decisions.CONTACT][LIST_COLUMNS + structured].reset_index(drop=True)
    controls = listed[listed["status"] == decisions.CONTROL][LIST_COLUMNS].reset_index(drop=True)
    scores = rounded(scored[SCORE_COLUMNS]).reset_index()
    return {"at_risk": at_risk, "controls": controls, "scores": scores}


def rounded(frame: pd.DataFrame) -> pd.DataFrame:
    floats = frame.select_dtypes("float").columns
    return frame.assign(**{col: frame[col].round(DECIMALS) for col in floats})


def summarize(tables: dict, scored: pd.DataFrame, dataset: Dataset, config: Config, scorer: Scorer, day) -> dict:
    at_risk = tables["at_risk"]
    return {
        "as_of": day.date().isoformat(),
        "model_versions": dict(sorted(scorer.versions.items())),
        "model_families": {f"retain-{name}": scorer.family(name) for name in sorted(MODELS)},
        "dataset_fingerprint": dataset.fingerprint,
        "policy": {
            "decisions": asdict(config.decisions),
            "winback": asdict(config.winback),
            "subscription": asdict(config.subscription),
            "uplift_model": scorer.uplift.kind,
            # what the expected values rest on: the uplift version's reason, with the coupon effects measured
            # on past campaigns (the rise in P(buy), the members kept per extra buyer) and their intervals
            "uplift_basis": (scorer.tags or {}).get("uplift", {}).get("retain.decision_reason", ""),
        },
        "members_scored": len(scored),
        "counts_by_segment": counts(at_risk["segment"]),
        "counts_by_action": counts(at_risk["action"]),
        "counts_by_status": counts(scored["status"]),
        "controls": len(tables["controls"]),
        "budget": config.winback.daily_budget,
        "budget_used": round(float(at_risk["cost"].sum()), 2),
        "expected_value_total": round(float(at_risk["expected_value"].sum()), 2),
        "currency": dataset.metadata.get("currency") or config.data.currency,  # the data's own (CDNOW: USD)
    }


def counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(values.value_counts().items())}


def write_files(folder: Path, tables: dict, summary: dict, html: str, campaigns: list[dict], csv: bool = True) -> None:
    tables["at_risk"].to_parquet(folder / "at_risk.parquet", index=False)
    if csv:  # UTF-8 with a byte-order mark, so that Excel opens the Chinese names correctly; CRLF line
        # ends (RFC 4180), which also makes the writer quote a cell holding a carriage return or a newline
        spreadsheet_safe(tables["at_risk"][LIST_COLUMNS]).to_csv(
            folder / "at_risk.csv", index=False, encoding="utf-8-sig", lineterminator="\r\n"
        )
    tables["controls"].to_parquet(folder / "controls.parquet", index=False)
    tables["scores"].to_parquet(folder / "scores.parquet", index=False)
    (folder / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (folder / "report.html").write_text(html, encoding="utf-8")
    readout_doc = {"as_of": summary["as_of"], "currency": summary["currency"], "campaigns": campaigns}
    (folder / "readout.json").write_text(json.dumps(readout_doc, indent=2) + "\n", encoding="utf-8")
    digests = {path.name: sha256(path) for path in sorted(folder.iterdir())}
    (folder / MANIFEST).write_text(json.dumps(digests, indent=2) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell that a spreadsheet would run as a formula (=, +, -, @, a tab or a
    carriage return first) prefixed by an apostrophe, which shows the text as it is. For the CSV only."""

    def neutral(value: object) -> object:
        return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    text = [col for col in frame.columns if not pd.api.types.is_numeric_dtype(frame[col])]
    return frame.assign(**{col: frame[col].map(neutral) for col in text})


def commit(temp: Path, final: Path, force: bool) -> str:
    """Move the written folder into place: 'written', 'unchanged' or 'replaced' (`force` always rewrites);
    ExportExists when `final` holds other content, or files that no longer match their digests."""
    if not final.exists() or not any(final.iterdir()):
        files.replace_folder(temp, final)
        return "written"
    if force:
        files.replace_folder(temp, final)
        return "replaced"
    damaged = damaged_files(final)
    if damaged:
        raise ExportExists(
            f"{final} holds an export whose files do not match its {MANIFEST} ({', '.join(damaged)}: damaged or "
            "edited); rerun with --force to write it again."
        )
    if (final / MANIFEST).read_bytes() != (temp / MANIFEST).read_bytes():
        raise ExportExists(
            f"{final} already holds an export with different content (other data, models or settings); "
            "rerun with --force to replace it."
        )
    return "unchanged"


def damaged_files(folder: Path) -> list[str]:
    """The files of an export folder that are missing, extra or differ from their digest in MANIFEST.json."""
    try:
        digests = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [MANIFEST]
    names = sorted(({path.name for path in folder.iterdir()} - {MANIFEST}) | set(digests))
    return [name for name in names if name not in digests or not matches(folder / name, digests[name])]


def matches(path: Path, digest: str) -> bool:
    return path.is_file() and not path.is_symlink() and sha256(path) == digest


def remove_leftovers(out: Path) -> None:
    """Remove the temporary folders of runs that crashed. Called under the folder's lock, so no other
    export is writing here: every `.<date>.tmp-*` or `.<date>.old-*` folder is a leftover."""
    for path in out.iterdir():
        if LEFTOVER.match(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
