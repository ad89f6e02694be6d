"""Choosing the model a shop is served: the candidate with the lowest log loss on a backtest before the
cutoff, unless a simpler candidate is within the paired-bootstrap interval of it.

Candidates, simplest first: `bgnbd_logistic` (BG/NBD pooled with an RFM logistic regression, no trees),
`lightgbm_anchored` and `lightgbm_anchored_expected` (trees correcting BG/NBD's log-odds, read from
P(any purchase) or from E[X]; with no tree kept the model is calibrated BG/NBD) and `lightgbm` (trees on
every feature, BG/NBD's among them). Log loss, because it is a proper score: it rewards the
probabilities a retention team reads, not only the ranking.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss

POOLED = "bgnbd_logistic"  # models.fit_pooled_model: it picks its BG/NBD column itself
# The tree candidates, each with the BG/NBD column its trees start from (models.ANCHORS), or None.
ANCHOR_OF = {
    "lightgbm_anchored": "bgnbd_p_purchase",
    "lightgbm_anchored_expected": "bgnbd_expected_purchases",
    "lightgbm": None,
}
# Simplest first. Which of them a shop considers is `selection.candidates` in retain.toml; without
# history enough to select on, the first (simplest) of those is served: two smooth models that cannot
# overfit a young log.
CANDIDATES = (POOLED, *ANCHOR_OF)
EPSILON = 1e-6


def row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPSILON, 1 - EPSILON)
    y = np.asarray(y, dtype=float)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def simplest_first(candidates: dict) -> list[str]:
    """The names of fitted candidates (name -> TaskModel, in configured order), simplest first: an anchored
    candidate that kept no tree is BG/NBD itself, simpler than any other, so it moves to the front."""
    return sorted(candidates, key=lambda name: candidates[name].family != "bgnbd")


def log_loss_gap(y: np.ndarray, simpler: np.ndarray, better: np.ndarray, rounds: int = 300, seed: int = 0) -> dict:
    """Log loss of `simpler` minus that of `better` on the same members, with a 95% paired bootstrap."""
    gap = row_log_loss(y, simpler) - row_log_loss(y, better)
    rng = np.random.default_rng(seed)
    means = [gap[rng.integers(0, len(gap), len(gap))].mean() for _ in range(rounds)]
    low, high = np.percentile(means, [2.5, 97.5])
    return {"estimate": float(gap.mean()), "ci_low": float(low), "ci_high": float(high)}


def choose(y: np.ndarray, scores: dict[str, np.ndarray], as_of: str, rounds: int = 300) -> dict:
    """The selection made on one backtest cutoff `as_of` among the candidates in `scores` (simplest
    first): every candidate's log loss, the chosen key and why."""
    names = list(scores)
    losses = {name: float(log_loss(y, np.clip(scores[name], EPSILON, 1 - EPSILON), labels=[0, 1])) for name in names}
    best = min(names, key=lambda name: losses[name])
    selected, reason = best, f"lowest log loss on {as_of}"
    for simpler in names[: names.index(best)]:
        gap = log_loss_gap(y, scores[simpler], scores[best], rounds)
        if gap["ci_low"] <= 0:
            selected = simpler
            reason = (
                f"{simpler} is within the interval of {best} on {as_of} (log loss gap {gap['estimate']:+.5f} "
                f"[{gap['ci_low']:+.5f}, {gap['ci_high']:+.5f}]): the simpler one"
            )
            break
    return {"as_of": as_of, "log_loss": losses, "selected": selected, "reason": reason}


def default(candidates: list[str], reason: str) -> dict:
    """The selection without a backtest to make it on: the simplest candidate."""
    return {"as_of": None, "log_loss": {}, "selected": candidates[0], "reason": reason}
