"""Metrics a retention team reads: ranking (ROC-AUC, PR-AUC, lift), calibration (Brier, log loss, ECE),
and a paired bootstrap for the difference between two models on the same members."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

METRICS = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_at_10pct")
EPSILON = 1e-6


def probability_bins(p: np.ndarray, bins: int = 10) -> np.ndarray:
    """The equal-width probability bin of each prediction, 0 to bins - 1 (1.0 falls in the last)."""
    return np.minimum((np.asarray(p, dtype=float) * bins).astype(int), bins - 1)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean prediction| over 10 equal-width probability bins, weighted by size."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    index = probability_bins(p, bins)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return float(total / len(y))


def lift_at(y: np.ndarray, score: np.ndarray, share: float = 0.10) -> float:
    """Positive rate among the top `share` by score, over the overall positive rate."""
    y = np.asarray(y, dtype=float)
    top = np.argsort(-np.asarray(score), kind="stable")[: max(1, int(round(share * len(y))))]
    return float(y[top].mean() / y.mean()) if y.mean() > 0 else float("nan")


def evaluate(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Every metric for probabilities `p` of the positive label `y` (0/1)."""
    y, p = np.asarray(y, dtype=int), np.clip(np.asarray(p, dtype=float), EPSILON, 1 - EPSILON)
    both = 0 < y.sum() < len(y)  # a ranking needs both labels; a tiny shop's holdout may have one
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p),
        "lift_at_10pct": lift_at(y, p),
    }


def paired_bootstrap_auc_gain(
    y: np.ndarray, p_model: np.ndarray, p_baseline: np.ndarray, rounds: int = 300, seed: int = 0
) -> dict[str, float]:
    """ROC-AUC gain of model over baseline on the same members, with a 95% paired bootstrap interval."""
    return paired_bootstrap_gain(y, p_model, p_baseline, "roc_auc", rounds, seed)


def paired_bootstrap_gain(
    y: np.ndarray,
    p_model: np.ndarray,
    p_baseline: np.ndarray,
    metric: str = "roc_auc",
    rounds: int = 300,
    seed: int = 0,
) -> dict[str, float]:
    """`metric` ("roc_auc" or "pr_auc") of model minus baseline on the same members, with a 95% paired
    bootstrap interval; NaN when the members hold one label only. Each round resamples the members with
    replacement; the metric of a resample is computed from the members' counts in it (`WeightedRanking`),
    which equals scikit-learn's on the resampled rows and is about 20 times faster."""
    y, a, b = np.asarray(y, dtype=float), np.asarray(p_model), np.asarray(p_baseline)
    if y.min() == y.max():  # one label only: no ranking to compare
        return {"estimate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    model, baseline = WeightedRanking(y, a, metric), WeightedRanking(y, b, metric)
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(rounds):
        counts = np.bincount(rng.integers(0, len(y), len(y)), minlength=len(y)).astype(float)
        if not 0 < counts @ y < counts.sum():  # a resample with one label only
            continue
        gains.append(model(counts) - baseline(counts))
    everyone = np.ones(len(y))
    if not gains:  # every resample held one label (a handful of members): no interval to claim
        estimate = float(model(everyone) - baseline(everyone))
        return {"estimate": estimate, "ci_low": float("-inf"), "ci_high": float("inf")}
    low, high = np.percentile(gains, [2.5, 97.5])
    return {"estimate": float(model(everyone) - baseline(everyone)), "ci_low": float(low), "ci_high": float(high)}


class WeightedRanking:
    """ROC-AUC or PR-AUC (average precision) of scores `p` for labels `y`, for any weights of the members:
    the scores are sorted and their ties grouped once, each weighting costs a few passes over the groups.
    Ties count as scikit-learn counts them (half a pair for ROC-AUC, one threshold for PR-AUC)."""

    def __init__(self, y: np.ndarray, p: np.ndarray, metric: str):
        if metric not in ("roc_auc", "pr_auc"):
            raise ValueError(f"unknown ranking metric {metric!r}")
        self.y, self.metric = np.asarray(y, dtype=float), metric
        values, self.group = np.unique(np.asarray(p, dtype=float), return_inverse=True)  # ascending scores
        self.groups = len(values)

    def __call__(self, weights: np.ndarray) -> float:
        positive = np.bincount(self.group, weights=weights * self.y, minlength=self.groups)
        negative = np.bincount(self.group, weights=weights * (1 - self.y), minlength=self.groups)
        if self.metric == "roc_auc":
            below = np.cumsum(negative) - negative
            return float(positive @ (below + 0.5 * negative) / (positive.sum() * negative.sum()))
        tp, fp = np.cumsum(positive[::-1]), np.cumsum(negative[::-1])  # thresholds from the highest score down
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
        return float(positive[::-1] @ precision / tp[-1])


def ece_noise_bound(p: np.ndarray, rounds: int = 200, quantile: float = 0.95, seed: int = 0) -> float:
    """The ECE that a perfectly calibrated model would still show on these members `quantile` of the time:
    labels drawn as Bernoulli(p), ECE measured, the quantile over `rounds` draws. On a small holdout an
    ECE below this is sampling noise, not miscalibration."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    draws = [expected_calibration_error(rng.random(len(p)) < p, p) for _ in range(rounds)]
    return float(np.quantile(draws, quantile))


def qini_curve(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Incremental buyers when targeting the top k by predicted uplift, for k = 0..n: treated buyers among
    the top k minus control buyers scaled to the treated count (Radcliffe's Qini curve)."""
    order = np.argsort(-np.asarray(uplift), kind="stable")
    y, t = np.asarray(y, dtype=float)[order], np.asarray(treated, dtype=bool)[order]
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * ~t)
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = np.where(n_c > 0, y_t - y_c * n_t / n_c, y_t)
    return np.arange(len(y) + 1), np.concatenate([[0.0], curve])


def qini_coefficient(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> float:
    """Area between the model's Qini curve and random targeting, over that of the perfect ranking
    (treated buyers first, control buyers last): 0 is random, 1 perfect, below 0 worse than random."""
    y, treated = np.asarray(y, dtype=float), np.asarray(treated, dtype=bool)

    def area_over_random(score: np.ndarray) -> float:
        x, curve = qini_curve(y, treated, score)
        return float(np.trapezoid(curve, x) - curve[-1] * x[-1] / 2)

    perfect = area_over_random(y * treated - y * ~treated)
    return area_over_random(uplift) / perfect if perfect > 0 else float("nan")


def qini_interval(
    y: np.ndarray, treated: np.ndarray, uplift: np.ndarray, rounds: int = 200, seed: int = 0
) -> dict[str, float]:
    """The Qini coefficient with a 95% bootstrap interval (offers resampled with replacement)."""
    y, treated, uplift = np.asarray(y, dtype=float), np.asarray(treated, dtype=bool), np.asarray(uplift)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        rows = rng.integers(0, len(y), len(y))
        value = qini_coefficient(y[rows], treated[rows], uplift[rows])
        if value == value:  # NaN: a resample without a buyer in one arm
            draws.append(value)
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan"))
    return {"estimate": qini_coefficient(y, treated, uplift), "ci_low": float(low), "ci_high": float(high)}


def uplift_calibration(
    y: np.ndarray, treated: np.ndarray, uplift: np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """The uplift model's calibration on offers whose outcome is known: the offers cut into `bins` groups
    of equal size by predicted uplift (lowest first), each with its mean predicted uplift and the
    realised one, the treated members' buying rate minus the control members' (NaN without both arms)."""
    y, treated, uplift = np.asarray(y, dtype=float), np.asarray(treated, dtype=bool), np.asarray(uplift, dtype=float)
    rows = []
    for group in np.array_split(np.argsort(uplift, kind="stable"), bins):
        t, c = group[treated[group]], group[~treated[group]]
        realised = y[t].mean() - y[c].mean() if len(t) and len(c) else float("nan")
        rows.append(
            {
                "predicted": float(uplift[group].mean()),
                "realised": float(realised),
                "treated": len(t),
                "control": len(c),
            }
        )
    return rows


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[list[float]]:
    """[mean prediction, observed rate, members] per non-empty equal-width probability bin."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    index = probability_bins(p, bins)
    return [
        [round(float(p[index == b].mean()), 6), round(float(y[index == b].mean()), 6), int((index == b).sum())]
        for b in range(bins)
        if (index == b).any()
    ]
