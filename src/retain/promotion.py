"""The promotion gate: the alias `champion` moves only to a model at least as good on the same held-out
snapshot, and calibrated well enough to be trusted as a probability."""

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
    new: dict[str, float], champion: dict[str, float] | None, tolerance: float, max_ece: float, force: bool = False
) -> Decision:
    """Gate a new model given its held-out metrics and the champion's on the same snapshot.

    Promote when there is no champion yet, or when the new PR-AUC is not lower than the champion's by more
    than `tolerance` and the new ECE is at most `max_ece`. `force` overrides, and says so.
    """
    if force:
        return Decision(FORCED, "promoted with --force-promote, bypassing the gate")
    if new["ece"] > max_ece:
        return Decision(NOT_PROMOTED, f"ECE {new['ece']:.4f} is above training.max_ece = {max_ece}")
    if champion is None:
        return Decision(PROMOTED, "first model: there was no champion")
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
