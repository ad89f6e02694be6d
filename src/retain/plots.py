"""Pictures a retention analyst would rather look at than read: calibration, ROC / precision-recall
against the baselines, cumulative gain, feature importance. Functions return matplotlib figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from retain.evaluation import probability_bins, qini_coefficient, qini_curve  # noqa: E402
from retain.models import POOL_WEIGHT, TaskModel  # noqa: E402

BINS = 10


def calibration(y: np.ndarray, scores: dict[str, np.ndarray], title: str) -> plt.Figure:
    """Observed rate against mean prediction in 10 equal-width bins, one line per model."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name, p in scores.items():
        frame = pd.DataFrame({"p": p, "y": y})
        frame["bin"] = probability_bins(frame["p"].to_numpy(), BINS)
        by_bin = frame.groupby("bin").mean()
        ax.plot(by_bin["p"], by_bin["y"], marker="o", label=name)
    ax.set(xlabel="predicted probability", ylabel="observed rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def roc_and_precision_recall(y: np.ndarray, scores: dict[str, np.ndarray], title: str) -> plt.Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        precision, recall, _ = precision_recall_curve(y, p)
        left.plot(fpr, tpr, label=name)
        right.plot(recall, precision, label=name)
    left.plot([0, 1], [0, 1], color="grey", linestyle=":")
    left.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC — {title}")
    right.set(xlabel="recall", ylabel="precision", title=f"precision-recall — {title}")
    left.legend(loc="lower right")
    right.legend(loc="lower left")
    fig.tight_layout()
    return fig


def gain(y: np.ndarray, scores: dict[str, np.ndarray], title: str) -> plt.Figure:
    """Cumulative share of positives caught when contacting the top x% by score."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    share = np.arange(1, len(y) + 1) / len(y)
    for name, p in scores.items():
        ordered = np.asarray(y)[np.argsort(-np.asarray(p), kind="stable")]
        ax.plot(share, np.cumsum(ordered) / max(ordered.sum(), 1), label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    ax.set(xlabel="share of members contacted (by score)", ylabel="share of positives caught", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def feature_importance(model: TaskModel, top: int = 20) -> plt.Figure:
    """Trees: each feature's share of the total split gain. The pooled model (no trees): each
    regression coefficient's share (on standardised inputs), beside the BG/NBD column's pooling weight."""
    if model.booster is None:
        weights = dict(zip(model.linear["columns"], np.abs(model.linear["coef"]) * (1 - POOL_WEIGHT), strict=True))
        gains, label = pd.Series({**weights, model.anchor: POOL_WEIGHT}), "share of the pooled log-odds' weight"
    else:
        gains = pd.Series(model.booster.feature_importance("gain"), index=model.feature_names)
        label = "share of total gain"
    gains = gains.sort_values().tail(top)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(gains) + 1.2))
    ax.barh(gains.index, gains.to_numpy() / gains.sum())
    ax.set(xlabel=label, title=f"feature importance — {model.task}")
    fig.tight_layout()
    return fig


def qini(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray, title: str) -> plt.Figure:
    """Incremental buyers against members targeted by predicted uplift, with random targeting."""
    x, curve = qini_curve(y, treated, uplift)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(x, curve, label=f"model (Qini coefficient {qini_coefficient(y, treated, uplift):.3f})")
    ax.plot([0, x[-1]], [0, curve[-1]], color="grey", linestyle=":", label="random")
    ax.set(xlabel="offers, by predicted uplift", ylabel="incremental buyers", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def uplift_calibration(table: list[dict[str, float]], title: str) -> plt.Figure:
    """Realised against predicted uplift per decile of prediction (`evaluation.uplift_calibration`)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    predicted = [row["predicted"] for row in table]
    realised = [row["realised"] for row in table]
    low, high = min(predicted + realised), max(predicted + realised)
    ax.plot([low, high], [low, high], color="grey", linestyle=":", label="perfect")
    ax.plot(predicted, realised, marker="o", label="deciles of predicted uplift")
    ax.set(xlabel="predicted uplift (P(order) with - without)", ylabel="realised: treated - control", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def close(fig: plt.Figure) -> None:
    plt.close(fig)
