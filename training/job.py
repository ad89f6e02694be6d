"""The training job: for each task, evaluate a model fitted before the latest complete cutoff on that
cutoff (held out), refit on all complete data, log everything to MLflow, register the refit with the
held-out metrics, and move the `champion` alias only through the promotion gate. Then the decision
models: the coupon uplift model (T-learner on past offers, measured by its Qini coefficient on the
latest offers held out) and the value model (BG/NBD x Gamma-Gamma). Last, the feature snapshot that
the scoring service serves.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from retain import backtest, btyd, decisions, drift, plots, promotion, snapshot
from retain import uplift as uplift_models
from retain.config import Config, LightGBMConfig
from retain.connection import dataset_connection
from retain.dataset import Dataset, open_dataset
from retain.engine import open_engine
from retain.errors import RetainError
from retain.evaluation import (
    calibration_table,
    ece_noise_bound,
    evaluate,
    paired_bootstrap_gain,
    qini_interval,
    uplift_calibration,
)
from retain.registry import CHALLENGER, CHAMPION, Registry
from retain.scoring import MODELS, model_input, task_probability
from retain.simulate.oracle import oracle_for
from retain.value import ValueModel, fit_value_model

console = Console(stderr=True, soft_wrap=True)


def run(data: Path | None, config: Config, force: bool = False) -> list[dict]:
    """`retain train`: the job on `data` (default `data.dataset`), then the held-out table on the terminal."""
    dataset = open_dataset(data or Path(config.data.dataset))
    results = train(dataset, config, force=force)
    Console(width=160).print(backtest.results_table(results, title="held-out evaluation (make train)"))
    return results


def train(dataset: Dataset, config: Config, force: bool = False) -> list[dict]:
    """Run the job for both tasks; return the held-out results (one per task)."""
    with open_engine(config) as engine:
        return train_with(dataset, config, force, backtest.Snapshots(dataset, config, engine, oracle_for(dataset)))


def train_with(dataset: Dataset, config: Config, force: bool, snapshots: backtest.Snapshots) -> list[dict]:
    registry = Registry(config.mlflow)
    tasks = config.labels.horizons
    results = []
    with console.status("training") as status:
        status.update("checking the shop's history and fitting the value model")
        value_model = fit_value(snapshots)  # before anything is registered: a tiny shop stops here
        for note in point_in_time_notes(dataset, config):
            console.print(note)
        for task, horizon in tasks.items():
            status.update(f"{task}: fitting and evaluating on the held-out cutoff")
            results.append(train_task(registry, snapshots, task, horizon, force))
        status.update("uplift: fitting the coupon model on past offers and their control groups")
        train_uplift(registry, snapshots)
        status.update("value: registering BG/NBD and Gamma-Gamma")
        register_value(registry, snapshots, value_model)
        if all(registry.version_by_alias(name, CHAMPION) for name in MODELS):
            status.update("writing the feature snapshot for serving")
            latest = snapshots.base_features(dataset.observed_until)
            console.print(f"snapshot for serving: {snapshot.write_latest(dataset, config, registry, latest)}")
        else:
            console.print("no snapshot written: a task has no champion yet (see the gate's reason above)")
    return results


def train_task(registry: Registry, snapshots: backtest.Snapshots, task: str, horizon: int, force: bool) -> dict:
    dataset, config = snapshots.dataset, snapshots.config
    started = time.perf_counter()
    cutoff = dataset.observed_until - pd.Timedelta(days=horizon)
    held_out = backtest.fit_for_cutoff(snapshots, cutoff, task, horizon)  # every candidate: the refit selects on them
    result, y, scores = backtest.evaluate_at(snapshots, held_out, task)
    refit = backtest.fit_for_cutoff(snapshots, dataset.observed_until, task, horizon, only_selected=True)
    served = scores[result["selected"]]  # the pipeline's choice at the held-out cutoff, made before it
    champion_metrics, gap, pipeline = None, None, None
    champion = registry.load(task, CHAMPION)
    if champion is not None:
        pipeline, p_champion = champion_pipeline(snapshots, held_out, task, champion[1].tags, scores)
        champion_metrics = evaluate(y.to_numpy(), p_champion)
        gap = paired_bootstrap_gain(y.to_numpy(), served, p_champion, "pr_auc", seed=config.training.seed)
    new_metrics = result["models"][result["selected"]]
    t = config.training
    ece_limit = max(t.max_ece, ece_noise_bound(served, seed=t.seed))
    decision = promotion.decide(new_metrics, champion_metrics, gap, ece_limit, force=force)
    with registry.run(task, run_name=f"{task}-{dataset.observed_until.date()}") as run_id:
        log_run(registry, dataset, config, task, horizon, held_out, refit, result, champion_metrics, decision)
        log_plots(registry, task, y.to_numpy(), scores, refit)
        latest = snapshots.features(dataset.observed_until - pd.Timedelta(days=horizon), horizon)
        version = registry.log_model(refit.model, latest.head(5)[refit.model.feature_names])
        # what `retain monitor` measures drift against: the members the model goes live on, as the scorer sees them
        live = model_input(refit.model, snapshots.base_features(dataset.observed_until), dataset.observed_until, config)
        references = drift.references(
            refit.model, live, refit.model.predict(live), dataset.observed_until, config.monitor.psi_bins
        )
        registry.log_dict(references, drift.REFERENCE_FILE)
        registry.log_metrics({"duration_seconds": time.perf_counter() - started})
    tags = {
        "retain.run_id": run_id,
        "retain.dataset_fingerprint": dataset.fingerprint,
        "retain.decision": decision.decision,
        "retain.decision_reason": decision.reason,
        "retain.model_family": refit.model.family,
        "retain.ece_limit": f"{ece_limit:.6f}",
        **{f"retain.metric.{name}": f"{value:.6f}" for name, value in new_metrics.items()},
        # the held-out calibration curve, which the daily report draws
        "retain.calibration": json.dumps(calibration_table(y.to_numpy(), served)),
        "retain.selection": json.dumps(refit.selection),
        "retain.lightgbm": json.dumps(dataclasses.asdict(config.lightgbm)),
    }
    if pipeline is not None:
        tags["retain.gate_compared_with"] = pipeline
    if force:
        tags["retain.forced_by"] = os.environ.get("USER") or getpass.getuser()
    registry.tag_version(task, version, tags)
    registry.set_alias(task, CHAMPION if decision.promote else CHALLENGER, version)
    console.print(
        f"{task}: version {version} ({refit.model.family}; {refit.selection['reason']}) {decision.decision} "
        f"({decision.reason})"
    )
    return {**result, "registered_version": version, "decision": decision.decision}


def champion_pipeline(
    snapshots: backtest.Snapshots, held_out: backtest.FittedTask, task: str, tags: dict, scores: dict
) -> tuple[str, np.ndarray]:
    """The champion judged as a pipeline, not as an artifact: its candidate (tag `retain.selection`; a
    champion from before model selection was plain `lightgbm`) fitted with its LightGBM settings (tag
    `retain.lightgbm`; the configured ones when absent) on the same data as the new model, scored on the
    same held-out window. The champion's own artifact may have been fitted on that window. Returns a
    description and the probabilities."""
    name = json.loads(tags.get("retain.selection", "{}")).get("selected", "lightgbm")
    stored = json.loads(tags.get("retain.lightgbm", "{}"))
    known = {field.name for field in dataclasses.fields(LightGBMConfig)}
    settings = (
        LightGBMConfig(**{k: v for k, v in stored.items() if k in known}) if stored else snapshots.config.lightgbm
    )
    same = settings == snapshots.config.lightgbm
    how = f"{name}, {'the same' if same else 'its own'} LightGBM settings, refitted before {held_out.plan.as_of.date()}"
    if same and name in scores:  # the new model's own candidate: already fitted on the same data
        return how, scores[name]
    data = backtest.training_data(snapshots, held_out.plan, task)
    model = backtest.fit_candidate(snapshots, held_out.plan, task, name, data, settings)
    return how, backtest.held_out_scores(snapshots, held_out.plan, model)


def train_uplift(registry: Registry, snapshots: backtest.Snapshots) -> dict:
    """Fit the coupon uplift model on the offers of the last `winback.history_days`, measure it on the
    latest `winback.holdout_days` of offers (fitted on the earlier ones), refit on all, and register it.
    The T-learner becomes champion when its held-out Qini coefficient's 95% bootstrap interval is above 0
    (`promotion.uplift_earns_its_place`; the offers it was fitted on end one response window before the
    held-out ones, so no outcome overlaps); otherwise, and without enough history, the prior does (scaled
    per member by 1 - churn risk: on the demo shop it earned as much as the T-learner, bench/README.md,
    issue 12), measured on the past campaigns where they show an effect (`measured_prior`)."""
    dataset, config = snapshots.dataset, snapshots.config
    w, until = config.winback, dataset.observed_until
    since, retention = until - pd.Timedelta(days=w.history_days), config.labels.churn_horizon_days
    outcomes = uplift_models.offer_outcomes(dataset, since, until, w.response_days, retention)
    x, offers = uplift_models.training_frame(outcomes, snapshots.base_features)
    names = list(snapshots.base_features(until).columns)
    x = x.reindex(columns=names)
    held_out_from = until - pd.Timedelta(days=w.holdout_days)
    held_out = (offers["sent_day"] >= held_out_from).to_numpy()
    # a gap of one response window: the outcomes of the offers fitted on close before the held-out ones start
    fitted_on = (offers["sent_day"] < held_out_from - pd.Timedelta(days=w.response_days)).to_numpy()
    seed = config.training.seed
    metrics: dict[str, float] = {"offers": len(offers), "held_out_offers": int(held_out.sum())}
    interval = None  # the held-out Qini with its interval, when there are held-out offers in both arms
    early = uplift_models.fit_uplift(x[fitted_on], offers[fitted_on], config, seed)
    treated = offers["treated"].to_numpy(dtype=bool)
    bought = offers["bought"].to_numpy(dtype=int)
    if early.kind == "t_learner" and (treated & held_out).any() and (~treated & held_out).any():
        predicted = uplift_models.predict_offers(early, x[held_out], offers[held_out])
        interval = qini_interval(bought[held_out], treated[held_out], predicted, seed=seed)
        calibration = uplift_calibration(bought[held_out], treated[held_out], predicted)
        metrics["qini"], metrics["qini_ci_low"], metrics["qini_ci_high"] = interval.values()
        metrics["held_out_observed_uplift"] = float(
            bought[held_out & treated].mean() - bought[held_out & ~treated].mean()
        )
        metrics["held_out_predicted_uplift"] = float(predicted.mean())
    prior, by_stage, prior_note = measured_prior(registry, snapshots, x, offers)
    metrics.update({f"prior_uplift_{k}": v for k, v in (prior or {}).items()})
    for stage, measured in by_stage.items():
        metrics.update({f"prior_uplift_{stage}_{k}": v for k, v in measured.items()})
    prior_uplift = prior["estimate"] if prior and prior["ci_low"] > 0 else None
    refit = uplift_models.fit_uplift(x, offers, config, seed, prior_uplift)
    earns, why = promotion.uplift_earns_its_place(interval)
    if refit.kind == "prior":
        model, reason = refit, f"priors: {refit.metadata['prior_reason']}"
    elif earns:
        model, reason = refit, f"T-learner: {why}"
    else:
        model = uplift_models.prior_model(config, names, f"the T-learner's {why}", prior_uplift)
        reason = f"priors: the T-learner's {why}"
    reason += f"; {prior_note}"
    # where the prior serves (every member, or those outside past campaigns' reach): its stage's rise if measured
    model.stage_priors = {stage: m["estimate"] for stage, m in by_stage.items() if m["ci_low"] > 0}
    kept = uplift_models.kept_per_buyer(offers, seed=seed)
    metrics.update({f"kept_per_buyer_{k}": v for k, v in (kept or {}).items()})
    model.kept_per_buyer = None if kept is None else kept["estimate"]
    if kept is None:
        reason += "; members kept per extra buyer: each member's churn risk (no campaign measures it)"
    else:
        measured = f"{kept['estimate']:.3f} [{kept['ci_low']:.3f}, {kept['ci_high']:.3f}]"
        reason += f"; members kept per extra buyer, measured on past campaigns: {measured}"
    with registry.run("uplift", run_name=f"uplift-{until.date()}") as run_id:
        registry.log_params(
            {
                "kind": model.kind,
                "history_days": w.history_days,
                "response_days": w.response_days,
                "holdout_days": w.holdout_days,
                "uses_coupon_value": model.uses_value,
                "redeem_share": round(model.redeem_share, 6),
                "dataset_fingerprint": dataset.fingerprint,
                **{f"lightgbm.{k}": v for k, v in uplift_models.arm_params(config, seed).items()},
                "rounds": w.uplift_rounds,
            }
        )
        registry.log_metrics({k: v for k, v in metrics.items() if v == v})
        if interval is not None:
            figure = plots.qini(bought[held_out], treated[held_out], predicted, "coupon uplift, held-out offers")
            registry.log_figure(figure, "plots/qini.png")
            plots.close(figure)
            registry.log_dict({"deciles": calibration}, "uplift_calibration.json")
            figure = plots.uplift_calibration(calibration, "coupon uplift by decile, held-out offers")
            registry.log_figure(figure, "plots/uplift_calibration.png")
            plots.close(figure)
        example = x.head(5).assign(**{uplift_models.COUPON_VALUE: next(iter(w.coupon_tiers.values()))})
        version = registry.log_model(model, example[[*names, uplift_models.COUPON_VALUE]])
    tags = {"retain.run_id": run_id, "retain.kind": model.kind, "retain.decision_reason": reason}
    tags.update({f"retain.metric.{k}": f"{v:.6f}" for k, v in metrics.items() if v == v})
    registry.tag_version("uplift", version, tags)
    registry.set_alias("uplift", CHAMPION, version)
    console.print(f"uplift: version {version} champion ({reason})")
    return metrics


def measured_prior(
    registry: Registry, snapshots: backtest.Snapshots, x: pd.DataFrame, offers: pd.DataFrame
) -> tuple[dict[str, float] | None, dict[str, dict[str, float]], str]:
    """The prior uplift measured on past campaigns (`uplift.campaign_prior`), each offer's reach being
    1 - the churn champion's risk for the member on the day it was sent; the same per lifecycle stage on that
    day (`uplift.stage_priors`); and a sentence saying which prior serves. A measured rise replaces
    `winback.prior_uplift` (the pooled one for every member, a stage's for its members) when its 95%
    interval is above 0."""
    config, configured = snapshots.config, snapshots.config.winback.prior_uplift
    champion = registry.load("churn")
    if champion is None or offers.empty:
        note = f"prior uplift {configured} as configured (no past campaigns or no churn model to measure it)"
        return None, {}, note
    churn = np.full(len(offers), np.nan)
    stage = np.full(len(offers), "", dtype=object)
    for day, rows in offers.groupby("sent_day").indices.items():
        column = decisions.Columns(x.iloc[rows])
        summary = btyd.summary_arrays(*(column(name) for name in btyd.SUMMARY_INPUTS))
        churn[rows] = task_probability(champion[0], column, summary, pd.Timestamp(day), config)
        stage[rows] = np.asarray(decisions.STAGES)[decisions.lifecycle(column("tenure_days"), churn[rows], config)]
    with_reach = offers.assign(reach=1.0 - churn, stage=stage)
    prior, by_stage = uplift_models.campaign_prior(with_reach), uplift_models.stage_priors(with_reach)
    if prior is None:
        return None, {}, f"prior uplift {configured} as configured (no past campaign has a control group)"
    measured = f"{prior['estimate']:.4f} [{prior['ci_low']:.4f}, {prior['ci_high']:.4f}]"
    stages = ", ".join(
        f"{name} {m['estimate']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]{'' if m['ci_low'] > 0 else ' (not used)'}"
        for name, m in by_stage.items()
    )
    if prior["ci_low"] > 0:
        note = f"prior uplift measured on past campaigns: {measured} (configured {configured}); by stage: {stages}"
    else:
        note = f"prior uplift {configured} as configured (measured on past campaigns {measured}, not above 0)"
        note += f"; by stage: {stages}"
    return prior, by_stage, note


def point_in_time_notes(dataset: Dataset, config: Config) -> list[str]:
    """What the features cannot date on this shop, said once per run: a tier without `tier_since` (left
    out), refunds without `refunded_at` (counted from the order date plus data.refund_delay_days). Counted
    in DuckDB over the contract views (a column the file lacks reads as NULL), not loaded into pandas."""
    notes = []
    with dataset_connection(dataset) as (con, tables):
        if "members" in tables:
            tiers, dated = con.execute("SELECT count(tier), count(tier_since) FROM members").fetchone()
            if tiers and not dated:
                notes.append("tier: not used (the members table has no tier_since, so today's tier would leak)")
        refunded, undated = con.execute(
            "SELECT count(*) FILTER (status = 'refunded'), "
            "count(*) FILTER (status = 'refunded' AND refunded_at IS NULL) FROM orders"
        ).fetchone()
    if undated:
        notes.append(
            f"refunds: {undated:,} of {refunded:,} have no refunded_at; each counts from its order date plus "
            f"{config.data.refund_delay_days} days (data.refund_delay_days)"
        )
    return notes


def fit_value(snapshots: backtest.Snapshots) -> ValueModel:
    """Check that the shop has enough repeat buyers to train on, then fit BG/NBD and Gamma-Gamma on the
    features as of the end of the data. Raises RetainError (nothing registered) for a shop too small."""
    dataset, config = snapshots.dataset, snapshots.config
    features = snapshots.base_features(dataset.observed_until)
    repeat = int((features["frequency"] >= 2).sum()) if len(features) else 0
    minimum = config.training.min_repeat_members
    if repeat < minimum:
        raise RetainError(
            f"{dataset.path} has {repeat} members who bought on two days or more; training needs at least "
            f"{minimum} (training.min_repeat_members) to learn anything a retention team can trust. Nothing "
            "was registered."
        )
    return fit_value_model(features, config.decisions.value_horizon_days, config.decisions.margin_rate)


def register_value(registry: Registry, snapshots: backtest.Snapshots, model: ValueModel) -> None:
    """Register the value model fitted by `fit_value` as the champion."""
    dataset = snapshots.dataset
    features = snapshots.base_features(dataset.observed_until)
    values = model.predict_frame(features)["value"].to_numpy()
    with registry.run("value", run_name=f"value-{dataset.observed_until.date()}") as run_id:
        registry.log_params(
            {
                **{f"bgnbd.{k}": v for k, v in model.bgnbd.params.items()},
                **{f"gamma_gamma.{k}": getattr(model.gamma_gamma, k) for k in ("p", "q", "gamma")},
                "horizon_days": model.horizon_days,
                "margin_rate": model.margin_rate,
                "dataset_fingerprint": dataset.fingerprint,
            }
        )
        registry.log_metrics({"members": len(features), "mean_value": float(values.mean())})
        version = registry.log_model(model, features.head(5)[model.feature_names])
    registry.tag_version("value", version, {"retain.run_id": run_id, "retain.mean_value": f"{values.mean():.2f}"})
    registry.set_alias("value", CHAMPION, version)
    console.print(f"value: version {version} champion (mean expected margin {values.mean():.1f})")


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
            "model_family": refit.model.family,
            "selected": refit.selected,
            "trees": refit.model.metadata.get("trees", refit.model.metadata.get("best_iteration")),
            **{f"training.{k}": v for k, v in vars(config.training).items()},
            **{f"lightgbm.{k}": v for k, v in vars(config.lightgbm).items()},
        }
    )
    registry.log_dict({"features": refit.model.feature_names}, "features.json")
    registry.log_dict(result, "held_out_result.json")
    registry.log_dict({"held_out": result["selection"], "served": refit.selection}, "selection.json")
    metrics = {f"{model}.{name}": value for model, values in result["models"].items() for name, value in values.items()}
    gain = result["selected_roc_auc_gain_vs_bgnbd"]
    metrics.update({f"served_vs_bgnbd.roc_auc_gain.{k}": v for k, v in gain.items()})
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
