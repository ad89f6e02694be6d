"""The `retain` command line: thin commands that parse arguments and call the library.

This is the only place that reads the clock (for defaults such as "today"). A user error prints one
sentence and exits 2; nothing prints a traceback unless RETAIN_DEBUG=1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from retain import files
from retain.config import Config, load_config
from retain.errors import RetainError

app = typer.Typer(
    help="retain: predict churn and repurchase for a shop's members and decide whom to win back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Config file (default: ./retain.toml or $RETAIN_CONFIG).")
]


def parse_date(text: str, flag: str) -> pd.Timestamp:
    """A YYYY-MM-DD date given on the command line."""
    try:
        return pd.Timestamp(pd.to_datetime(text, format="%Y-%m-%d"))
    except (ValueError, TypeError):
        raise RetainError(f"{flag} must be a date like 2025-06-01, got {text!r}.") from None


def write_json(path: Path, doc: dict) -> None:
    """Write a command's JSON document (in one step) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    files.write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    console.print(f"wrote {path}")


def settings(path: Path | None) -> Config:
    return load_config(path)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")] = Path("data/sim"),
    members: Annotated[int, typer.Option(min=1, help="Number of members.")] = 50_000,
    days: Annotated[int, typer.Option(min=7, help="Days simulated.")] = 730,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same dataset.")] = 42,
    start: Annotated[str, typer.Option(help="First simulated day.")] = "2024-01-01",
    process: Annotated[str, typer.Option(help="'shop' (Tmall-style store) or 'bgnbd' (plain BG/NBD log).")] = "shop",
    params: Annotated[
        str, typer.Option(help="BG/NBD parameters r,alpha,a,b (with --process bgnbd).")
    ] = "0.243,4.414,0.793,2.426",
    grain: Annotated[
        str, typer.Option(help="'line' also writes the orders as line items to OUT/lines/ (with their mapping).")
    ] = "order",
    shift: Annotated[
        str | None,
        typer.Option(
            help="A regime change from a day on, DATE:KIND: 'browsing' (half the browsing events recorded) or "
            "'disengagement' (members start to disengage three times as fast)."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Simulate a shop with ground truth (truth.parquet).

    Example: retain simulate --members 50000 --days 730 --seed 42 --out data/demo
    """
    if grain not in ("order", "line"):
        raise RetainError(f"--grain must be 'order' or 'line', got {grain!r}.")
    start_day = parse_date(start, "--start")
    shift_day, shift_kind = _parse_shift(shift, start_day, days) if shift else (-1, "")
    from rich.progress import Progress

    from retain.simulate import simulate_bgnbd, simulate_shop

    data = settings(config).data
    if process == "bgnbd":
        if shift:
            raise RetainError("--shift is for --process shop: a plain BG/NBD log has no browsing or stages.")
        values = _parse_params(params)
        metadata = simulate_bgnbd(out, members, days / 7.0, *values, seed=seed, start=start_day, buckets=data.buckets)
    elif process == "shop":
        from retain.simulate.process import PROCESS

        windows = tuple(tuple(window) for window in data.promotion_windows)  # one calendar
        shop = dataclasses.replace(PROCESS, promotion_windows=windows, shift_day=shift_day, shift_kind=shift_kind)
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("simulating members", total=None)
            metadata = simulate_shop(
                out,
                members,
                days,
                seed,
                start=start_day,
                currency=data.currency,
                process=shop,
                buckets=data.buckets,
                on_chunk=lambda done, total: progress.update(task, completed=done, total=total),
            )
    else:
        raise RetainError(f"--process must be 'shop' or 'bgnbd', got {process!r}.")
    rows = ", ".join(f"{table} {n:,}" for table, n in metadata["rows"].items())
    console.print(f"wrote {out}: {rows}; observed until {metadata['observed_until'][:10]}")
    if grain == "line":
        from retain.dataset import open_dataset
        from retain.simulate.lines import write_line_items

        path = write_line_items(open_dataset(out).read("orders"), out / "lines", seed)
        console.print(
            f"wrote {path} (line items, cancellations, guests, postage); map it with {path.parent}/mapping.toml"
        )


def _parse_shift(text: str, start: pd.Timestamp, days: int) -> tuple[int, str]:
    """`--shift DATE:KIND` as (the simulation day it starts, its kind)."""
    from retain.simulate.process import SHIFT_KINDS

    date, _, kind = text.partition(":")
    day = (parse_date(date, "--shift") - start).days
    if kind not in SHIFT_KINDS:
        raise RetainError(f"--shift must be DATE:KIND with KIND one of {', '.join(SHIFT_KINDS)}, got {text!r}.")
    if not 0 < day < days:
        raise RetainError(f"--shift {date} is outside the simulated period ({start.date()} and the {days} days after).")
    return day, kind


def _parse_params(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) <= 0:
        raise RetainError(f"--params must be four positive numbers r,alpha,a,b, got {text!r}.")
    return values


@app.command()
def ingest(
    orders: Annotated[Path, typer.Option(help="Orders file (CSV or Parquet).")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    members: Annotated[Path | None, typer.Option(help="Members file.")] = None,
    events: Annotated[Path | None, typer.Option(help="Browsing events file.")] = None,
    offers: Annotated[Path | None, typer.Option(help="Offers file.")] = None,
    subscriptions: Annotated[Path | None, typer.Option(help="Subscriptions file.")] = None,
    suppressions: Annotated[
        Path | None, typer.Option(help="Suppressions file: opt-outs, complaints, legal holds (never contacted).")
    ] = None,
    mapping: Annotated[Path | None, typer.Option(help="Mapping TOML from source columns to the contract.")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="End of the observed period (exclusive).")] = None,
    currency: Annotated[str | None, typer.Option(help="Currency of amounts (default: data.currency).")] = None,
    config: ConfigOption = None,
) -> None:
    """Validate a shop's files into a canonical dataset; bad rows go to quarantine/ with a reason.

    Example: retain ingest --orders examples/cdnow/CDNOW_master.txt
    --mapping examples/cdnow_mapping.toml --currency USD --out data/cdnow
    """
    from retain.ingest import IngestRejected
    from retain.ingest import ingest as run_ingest

    cfg = settings(config)
    sources = {
        name: path
        for name, path in [
            ("orders", orders),
            ("members", members),
            ("events", events),
            ("offers", offers),
            ("subscriptions", subscriptions),
            ("suppressions", suppressions),
        ]
        if path
    }
    cutoff = parse_date(as_of, "--as-of") if as_of else None
    try:
        report = run_ingest(
            sources,
            out,
            mapping,
            cutoff,
            cfg.ingest.max_bad_share,
            currency or cfg.data.currency,
            cfg.data.timezone,
            cfg.data.buckets,
        )
    except IngestRejected as exc:
        err_console.print(exc.details, markup=False, highlight=False)
        raise
    table = Table("table", "read", "kept", "quarantined", "by reason", title=f"ingested into {out}")
    for name, counts in report["tables"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in counts["quarantined_by_reason"].items()) or "-"
        table.add_row(
            name, f"{counts['rows_read']:,}", f"{counts['rows_kept']:,}", f"{counts['rows_quarantined']:,}", reasons
        )
    console.print(table)
    orders = report["tables"]["orders"]
    console.print(
        f"orders: {orders['orders_written']:,} written from {orders['rows_kept']:,} rows; "
        f"{orders['guest']:,} guest rows ({orders['guest_revenue_share']:.1%} of revenue, not in the dataset); "
        f"{orders['excluded']:,} excluded (not products); cancellations {orders['cancellations_matched']:,} "
        f"matched, {orders['cancellations_unmatched']:,} unmatched (kept in quarantine/orders.parquet)"
    )


@app.command()
def rebucket(
    data: Annotated[Path, typer.Option(help="Dataset folder to rewrite in place.")],
    buckets: Annotated[int | None, typer.Option(min=1, help="Member buckets (default: data.buckets).")] = None,
    config: ConfigOption = None,
) -> None:
    """Rewrite a dataset's tables into member buckets (one written before them, or with another number).

    Example: retain rebucket --data data/shop
    """
    from retain.dataset import open_dataset
    from retain.dataset import rebucket as rewrite

    dataset = open_dataset(data)
    n = buckets or settings(config).data.buckets
    metadata = rewrite(dataset, n)
    rows = ", ".join(f"{table} {count:,}" for table, count in metadata["rows"].items())
    console.print(f"rewrote {data} into {n} member buckets: {rows}")


@app.command()
def features(
    as_of: Annotated[str, typer.Option("--as-of", help="Cutoff: features see only what was known before it.")],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: data.dataset).")] = None,
    config: ConfigOption = None,
) -> None:
    """Build point-in-time member features as of a cutoff and print a summary.

    Example: retain features --data data/demo --as-of 2025-06-01 --out data/features.parquet
    """
    from retain.dataset import open_dataset
    from retain.engine import open_engine

    cfg = settings(config)
    cutoff = parse_date(as_of, "--as-of")
    dataset = open_dataset(data or Path(cfg.data.dataset))
    with open_engine(cfg) as engine:
        frame = engine.features(dataset, cutoff)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_file(out, frame.to_parquet)
    console.print(feature_summary(frame, cutoff))
    console.print(f"wrote {out}: {len(frame):,} members x {frame.shape[1]} features")


@app.command()
def backtest(
    cutoffs: Annotated[str, typer.Option(help="Comma-separated cutoff dates (as_of) to evaluate at.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: data.dataset).")] = None,
    task: Annotated[str, typer.Option(help="churn, repurchase or both.")] = "both",
    churn_horizon: Annotated[int | None, typer.Option(min=1, help="Churn horizon in days.")] = None,
    repurchase_horizon: Annotated[int | None, typer.Option(min=1, help="Repurchase horizon in days.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    config: ConfigOption = None,
) -> None:
    """Fit on earlier monthly snapshots and evaluate at each cutoff against the baselines.

    Example: retain backtest --data data/cdnow --cutoffs 1997-10-01 --task repurchase --repurchase-horizon 273
    """

    from retain import backtest as bt
    from retain.dataset import open_dataset
    from retain.engine import open_engine
    from retain.simulate.oracle import oracle_for

    cfg = settings(config)
    if task not in ("churn", "repurchase", "both"):
        raise RetainError(f"--task must be churn, repurchase or both, got {task!r}.")
    given = {"churn": churn_horizon, "repurchase": repurchase_horizon}
    horizons = {name: given[name] or days for name, days in cfg.labels.horizons.items()}
    tasks = horizons if task == "both" else {task: horizons[task]}
    dates = [parse_date(text.strip(), "--cutoffs") for text in cutoffs.split(",") if text.strip()]
    if not dates:
        raise RetainError("--cutoffs needs at least one date, like 2025-06-01.")
    dataset = open_dataset(data or Path(cfg.data.dataset))
    with open_engine(cfg) as engine, err_console.status("backtesting") as status:
        doc = bt.run_backtest(
            dataset,
            dates,
            tasks,
            cfg,
            progress=lambda text: status.update(f"backtesting {text}"),
            engine=engine,
            oracle=oracle_for(dataset),
        )
    Console(width=160).print(bt.results_table(doc["results"], title=f"backtest on {dataset.path}"))
    if json_out:
        write_json(json_out, doc)


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: data.dataset).")] = None,
    force_promote: Annotated[
        bool, typer.Option("--force-promote", help="Make the new models champion, bypassing the gate.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Fit, backtest, log to MLflow and gate the models; register the champions; write the serving snapshot.

    Example: retain train --data data/demo
    """
    from training.job import run

    run(data, settings(config), force=force_promote)


@app.command()
def export(
    date: Annotated[
        str | None, typer.Option(help="The day to export, YYYY-MM-DD (default: the dataset's observed_until).")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: data.dataset).")] = None,
    out: Annotated[Path, typer.Option(help="Folder the day's export folder is written into.")] = Path("exports"),
    force: Annotated[bool, typer.Option(help="Replace an export for the date whose content differs.")] = False,
    csv: Annotated[
        bool, typer.Option("--csv/--no-csv", help="Also write at_risk.csv (off for very large lists).")
    ] = True,
    serve: Annotated[
        bool, typer.Option(help="Make the service serve this day even if it serves a later one (after /reload).")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Score every member as of a day and write the at-risk list, summary and report to OUT/DATE/.

    Exit codes: 0 written (or already written with the same content); 2 bad usage or input;
    3 an export for the date with different or damaged content exists and --force was not given,
    or another export is writing into OUT right now.

    Example: retain export --date 2025-12-31 --data data/demo
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from retain import export as exporter
    from retain.dataset import open_dataset
    from retain.engine import open_engine
    from retain.registry import Registry

    cfg = settings(config)
    dataset = open_dataset(data or Path(cfg.data.dataset))
    day = exporter.check_date(date or dataset.observed_until, dataset, today=pd.Timestamp.now())
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with open_engine(cfg, scoring=True) as engine, Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("starting", total=None)
        result = exporter.run(
            dataset,
            cfg,
            Registry(cfg.mlflow),
            day,
            out,
            force,
            step=lambda text: progress.update(task, description=text),
            engine=engine,
            csv=csv,
            serve=serve,
        )
    s = result.summary
    verb = {"written": "wrote", "unchanged": "already written, same content:", "replaced": "replaced"}[result.status]
    console.print(
        f"{verb} {result.folder}/ — {s['counts_by_status'].get('contact', 0):,} members to contact, "
        f"{s['controls']:,} held out, budget used {s['budget_used']:,.2f} {s['currency']}, "
        f"expected value {s['expected_value_total']:,.2f} {s['currency']}"
    )
    listed = result.folder / ("at_risk.csv" if csv else "at_risk.parquet")
    console.print(f"list: {listed}   report: {result.folder / 'report.html'}")
    if result.served_as_of is not None and result.served_as_of != day:
        console.print(
            f"the service keeps serving {result.served_as_of.date()} (later than {day.date()}); "
            "pass --serve to serve this day instead"
        )


@app.command()
def readout(
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: data.dataset).")] = None,
    since: Annotated[str | None, typer.Option(help="Only campaigns sent on or after this day, YYYY-MM-DD.")] = None,
    days: Annotated[
        int | None, typer.Option(min=1, help="Days after sending to count orders in (default: winback.response_days).")
    ] = None,
    exports: Annotated[
        Path | None, typer.Option(help="Export folder whose lists give each offer's predicted value (e.g. exports).")
    ] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Write the readout as JSON here.")] = Path(
        "exports/readout.json"
    ),
    config: ConfigOption = None,
) -> None:
    """Did the campaign work? Contacted against control for every campaign whose response window closed.

    Example: retain readout --data data/demo --since 2025-06-01 --exports exports
    """

    from retain import readout as campaign_readout
    from retain.dataset import open_dataset

    cfg = settings(config)
    dataset = open_dataset(data or Path(cfg.data.dataset))
    start = parse_date(since, "--since") if since else None
    predicted = campaign_readout.predicted_values(exports) if exports else None
    window = days or cfg.winback.response_days
    outcomes = campaign_readout.offer_outcomes(dataset, window, start)
    campaigns = campaign_readout.readout(outcomes, cfg, window, predicted)
    if not campaigns:
        console.print("no campaign with a closed response window in the offers table: nothing to read out")
    else:
        Console(width=200).print(campaign_readout.table(campaigns, dataset.metadata.get("currency", "")))
    doc = {"dataset": str(dataset.path), "currency": dataset.metadata.get("currency"), "campaigns": campaigns}
    write_json(json_out, doc)


@app.command()
def monitor(
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: data.dataset).")] = None,
    exports: Annotated[Path, typer.Option(help="Folder of the daily exports to read back.")] = Path("exports"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures and alerts here (default: EXPORTS/monitor.json).")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Monitor as on this day, YYYY-MM-DD (default: the end of the data).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Is the model still right? Realised accuracy of past exports, drift since training; exit 4 on an alert.

    Example: retain monitor --data data/demo --exports exports   (cron: alert when the exit code is 4)
    """
    from retain import monitor as health
    from retain.dataset import open_dataset
    from retain.registry import Registry

    cfg = settings(config)
    dataset = open_dataset(data or Path(cfg.data.dataset))
    day = parse_date(as_of, "--as-of") if as_of else None
    doc = health.run(dataset, cfg, Registry(cfg.mlflow), exports, day)
    out = Console(width=200)
    if doc["days"]:
        out.print(health.accuracy_table(doc["days"]))
    else:
        console.print(f"no export with scores in {exports}/: no realised or estimated accuracy yet")
    for report in doc["drift"]:
        out.print(health.drift_table(report, cfg.monitor.max_psi))
    if doc["volume"]:
        out.print(health.volume_table(doc["volume"], cfg.monitor.max_volume_ratio))
    for note in doc["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)
    write_json(json_out or exports / "monitor.json", doc)
    for alert in doc["alerts"]:
        err_console.print(f"alert: {alert}", markup=False, highlight=False)
    if doc["alerts"]:
        raise typer.Exit(code=health.ALERT_EXIT)
    console.print("all figures hold: no alert")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: serving.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serving.port).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: serving.workers).")] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the champion models and the current snapshot over HTTP (BentoML).

    Example: RETAIN_API_TOKEN=... retain serve --port 3000 --workers 2
    """
    import os
    import sys

    from retain.config import loopback

    cfg = settings(config)
    host = host or cfg.serving.host
    if cfg.api_token is None and not cfg.serving.allow_anonymous:
        raise RetainError("RETAIN_API_TOKEN is not set: set it, or set serving.allow_anonymous = true for local use.")
    if cfg.api_token is None and not loopback(host):
        raise RetainError(
            f"Refusing to serve {host} without a token: serving.allow_anonymous = true is for 127.0.0.1 only; "
            "set RETAIN_API_TOKEN to serve other machines."
        )
    prefix = cfg.serving.path_prefix
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise RetainError(
            f'serving.path_prefix must start with "/" and not end with one, like "/retain"; got {prefix!r}.'
        )
    check_servable(cfg)
    env = {
        **os.environ,
        "RETAIN_SERVING_WORKERS": str(workers or cfg.serving.workers),
        "RETAIN_SERVING_HOST": host,
        "RETAIN_SERVING_PATH_PREFIX": prefix,
        "BENTOML_DO_NOT_TRACK": "true",
    }
    if config:
        env["RETAIN_CONFIG"] = str(config.resolve())
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "serving.service:RetainService",
        "--host",
        host,
        "--port",
        str(port or cfg.serving.port),
    ]
    sys.stdout.flush()
    os.execve(sys.executable, command, env)  # the server takes this process's id: stop it by that id


def check_servable(cfg: Config) -> None:
    """Refuse to start the service, in one sentence, when there is nothing to serve yet."""
    from retain import snapshot
    from retain.registry import Registry
    from retain.scoring import MODELS

    missing = Registry(cfg.mlflow).missing_champions(MODELS)
    if missing:
        raise RetainError(
            f"There is no champion for {', '.join(missing)} in {cfg.mlflow.tracking_uri} yet; "
            "run `make train` (retain train --data ...) first."
        )
    if snapshot.served_as_of(Path(cfg.serving.snapshot_dir)) is None:
        raise RetainError(
            f"There is no scored snapshot in {cfg.serving.snapshot_dir}/ yet; run `make train` or `retain export`."
        )


def feature_summary(frame: pd.DataFrame, as_of: pd.Timestamp) -> Table:
    """A few headline features: how many members have them and their quartiles."""
    table = Table("feature", "members", "p25", "median", "p75", title=f"features as of {as_of.date()}")
    for column in frame.columns[:12]:
        values = frame[column].dropna().astype(float)
        q = values.quantile([0.25, 0.5, 0.75]) if len(values) else pd.Series([float("nan")] * 3)
        table.add_row(column, f"{len(values):,}", *(f"{v:,.2f}" for v in q))
    return table


def main() -> None:
    """Entry point: run the app, turning user errors into one sentence and a non-zero exit."""
    try:
        app()
    except RetainError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        err_console.print(f"error: {exc.strerror}: {exc.filename}", markup=False, highlight=False)
        sys.exit(2)
    except Exception as exc:  # a bug, not a user error: say so in one line unless debugging
        if os.environ.get("RETAIN_DEBUG"):
            raise
        err_console.print(
            f"internal error: {type(exc).__name__}: {exc} (set RETAIN_DEBUG=1 for the traceback)",
            markup=False,
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
