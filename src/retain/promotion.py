"""The promotion gate: the alias `champion` moves only to a model at least as good on the same held-out
snapshot, and calibrated well enough to be trusted as a probability. A task's first model is always
promoted, so that every shop that trains has a champion to serve."""

from __future__ import annotations

from dataclasses import dataclass

PROMOTED, NOT_PROMOTED, FORCED = "promoted", "not_promoted", "forced"


@dataclass(frozen=True)
class Decision:
    decision: str
    reason: str

    @property
    def promote(self) -> bool:
        return self.decision in (PROMOTED, FORCED)


def decide(
    new: dict[str, float], champion: dict[str, float] | None, tolerance: float, ece_limit: float, force: bool = False
) -> Decision:
    """Gate a new model given its held-out metrics and the champion's on the same snapshot.

    The first model of a task is always promoted: a shop must have a champion to be served (its ECE is
    in the reason). Later, promote when the new PR-AUC is not lower than the champion's by more than
    `tolerance` and the new ECE is at most `ece_limit` (training.max_ece, or the sampling noise of a
    small holdout when that is larger: `evaluation.ece_noise_bound`). `force` overrides, and says so.
    """
    if force:
        return Decision(FORCED, "promoted with --force-promote, bypassing the gate")
    if champion is None:
        note = "" if new["ece"] <= ece_limit else f"; its ECE {new['ece']:.4f} is above the limit {ece_limit:.4f}"
        return Decision(PROMOTED, f"first model: there was no champion{note}")
    if new["ece"] > ece_limit:
        return Decision(NOT_PROMOTED, f"ECE {new['ece']:.4f} is above the limit {ece_limit:.4f}")
    drop = champion["pr_auc"] - new["pr_auc"]
    if drop > tolerance:
        return Decision(
            NOT_PROMOTED,
            f"PR-AUC {new['pr_auc']:.4f} is {drop:.4f} below the champion's {champion['pr_auc']:.4f} "
            f"(tolerance {tolerance})",
        )
    return Decision(
        PROMOTED, f"PR-AUC {new['pr_auc']:.4f} against the champion's {champion['pr_auc']:.4f}, ECE {new['ece']:.4f}"
    )
