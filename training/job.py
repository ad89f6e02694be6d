"""The training job: for each task, evaluate a model fitted before the latest complete cutoff on that
cutoff (held out), refit on all complete data, log everything to MLflow, register the refit with the
held-out metrics, and move the `champion` alias only through the promotion gate. Then write the feature
snapshot that the scoring service serves.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console

from retain import backtest, plots, promotion, snapshot
from retain.config import Config, load_config
from retain.dataset import Dataset, open_dataset
from retain.errors import RetainError
from retain.evaluation import evaluate
from retain.models import LIGHTGBM_PARAMS
from retain.registry import CHALLENGER, CHAMPION, Registry

console = Console(stderr=True, soft_wrap=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Fit, backtest and register the churn and repurchase models (make train).",
        epilog="Example: python -m training --data data/demo",
    )
    parser.add_argument("--data", type=Path, help="dataset folder (default: data.dataset in retain.toml)")
    parser.add_argument("--force-promote", action="store_true", help="make the new models champion, bypassing the gate")
    parser.add_argument("--config", type=Path, help="config file (default: ./retain.toml or $RETAIN_CONFIG)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        dataset = open_dataset(args.data or Path(config.data.dataset))
        results = train(dataset, config, force=args.force_promote)
    except RetainError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        return exc.exit_code
    Console(width=160).print(backtest.results_table(results, title="held-out evaluation (make train)"))
    return 0


def train(dataset: Dataset, config: Config, force: bool = False) -> list[dict]:
    """Run the job for both tasks; return the held-out results (one per task)."""
    registry = Registry(config.mlflow)
    snapshots = backtest.Snapshots(dataset, config)
    tasks = {"churn": config.labels.churn_horizon_days, "repurchase": config.labels.repurchase_horizon_days}
    results = []
    with console.status("training") as status:
        for task, horizon in tasks.items():
            status.update(f"{task}: fitting and evaluating on the held-out cutoff")
            results.append(train_task(registry, snapshots, task, horizon, force))
        if all(registry.version_by_alias(task, CHAMPION) for task in tasks):
            status.update("writing the feature snapshot for serving")
            console.print(f"snapshot for serving: {snapshot.write_latest(dataset, config, registry)}")
        else:
            console.print("no snapshot written: a task has no champion yet (see the gate's reason above)")
    return results


def train_task(registry: Registry, snapshots: backtest.Snapshots, task: str, horizon: int, force: bool) -> dict:
    dataset, config = snapshots.dataset, snapshots.config
    started = time.perf_counter()
    cutoff = dataset.observed_until - pd.Timedelta(days=horizon)
    held_out = backtest.fit_for_cutoff(snapshots, cutoff, task, horizon)
    result, y, scores = backtest.evaluate_at(snapshots, held_out, task)
    refit = backtest.fit_for_cutoff(snapshots, dataset.observed_until, task, horizon)
    champion = registry.load(task, CHAMPION)
    champion_metrics = None
    if champion is not None:
        champion_model, _ = champion
        x = snapshots.features(cutoff, champion_model.horizon_days).reindex(y.index)
        champion_metrics = evaluate(y.to_numpy(), champion_model.predict(x))
    new_metrics = result["models"]["lightgbm"]
    t = config.training
    decision = promotion.decide(new_metrics, champion_metrics, t.promotion_tolerance, t.max_ece, force=force)
    with registry.run(task, run_name=f"{task}-{dataset.observed_until.date()}") as run_id:
        log_run(registry, dataset, config, task, horizon, held_out, refit, result, champion_metrics, decision)
        log_plots(registry, task, y.to_numpy(), scores, refit)
        input_example = snapshots.features(dataset.observed_until - pd.Timedelta(days=horizon), horizon).head(5)
        version = registry.log_model(refit.model, input_example)
        registry.log_metrics({"duration_seconds": time.perf_counter() - started})
    tags = {
        "retain.run_id": run_id,
        "retain.dataset_fingerprint": dataset.fingerprint,
        "retain.decision": decision.decision,
        "retain.decision_reason": decision.reason,
        **{f"retain.metric.{name}": f"{value:.6f}" for name, value in new_metrics.items()},
    }
    if force:
        tags["retain.forced_by"] = os.environ.get("USER") or getpass.getuser()
    registry.tag_version(task, version, tags)
    registry.set_alias(task, CHAMPION if decision.promote else CHALLENGER, version)
    console.print(f"{task}: version {version} {decision.decision} ({decision.reason})")
    return {**result, "registered_version": version, "decision": decision.decision}


def log_run(registry, dataset, config, task, horizon, held_out, refit, result, champion_metrics, decision) -> None:
    registry.log_params(
        {
            "task": task,
            "horizon_days": horizon,
            "train_horizon_days": refit.plan.train_horizon_days,
            "dataset_path": str(dataset.path),
            "dataset_fingerprint": dataset.fingerprint,
            "dataset_first_order_at": dataset.metadata["first_order_at"],
            "dataset_observed_until": dataset.metadata["observed_until"],
            "held_out_cutoff": result["as_of"],
            "held_out_fit_snapshots": ",".join(result["fit_snapshots"]),
            "held_out_calibration_snapshots": ",".join(result["calibration_snapshots"]),
            "refit_fit_snapshots": ",".join(str(d.date()) for d in refit.plan.fit_dates),
            "refit_calibration_snapshots": ",".join(str(d.date()) for d in refit.plan.calibration_dates),
            "n_features": len(refit.model.feature_names),
        "refit_training_rows": refit.training_rows,
            "best_iteration": refit.model.metadata.get("best_iteration"),
            **{f"training.{k}": v for k, v in vars(config.training).items()},
            **{f"lightgbm.{k}": v for k, v in LIGHTGBM_PARAMS.items()},
        }
    )
    registry.log_dict({"features": refit.model.feature_names}, "features.json")
    registry.log_dict(result, "held_out_result.json")
    metrics = {f"{model}.{name}": value for model, values in result["models"].items() for name, value in values.items()}
    gain = result["lightgbm_roc_auc_gain_vs_bgnbd"]
    metrics.update({f"lightgbm_vs_bgnbd.roc_auc_gain.{k}": v for k, v in gain.items()})
    if champion_metrics:
        metrics.update({f"champion.{k}": v for k, v in champion_metrics.items()})
    metrics.update({"n_members": result["n_members"], "positive_rate": result["positive_rate"]})
    registry.log_metrics(metrics)
    registry.set_tags({"retain.decision": decision.decision, "retain.decision_reason": decision.reason})


def log_plots(registry: Registry, task: str, y, scores: dict, refit: backtest.FittedTask) -> None:
    title = f"{task}, held out"
    for name, figure in [
        ("calibration.png", plots.calibration(y, scores, title)),
        ("roc_pr.png", plots.roc_and_precision_recall(y, scores, title)),
        ("gain.png", plots.gain(y, scores, title)),
        ("feature_importance.png", plots.feature_importance(refit.model)),
    ]:
        registry.log_figure(figure, f"plots/{name}")
        plots.close(figure)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
