"""The promotion gate: the alias `champion` moves only to a model no worse than the champion's pipeline
refitted on the same data and judged on the same held-out window, and calibrated well enough to be
trusted as a probability. A task's first model is always promoted, so that every shop that trains has a
champion to serve."""

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
    new: dict[str, float],
    champion: dict[str, float] | None,
    gap: dict[str, float] | None,
    ece_limit: float,
    force: bool = False,
) -> Decision:
    """Gate a new model given its held-out metrics and those of the champion's pipeline on the same window.

    `gap`: the new PR-AUC minus the champion pipeline's on the same members, with its 95% paired bootstrap
    interval (`evaluation.paired_bootstrap_gain`). The first model of a task is always promoted: a shop
    must have a champion to be served (its ECE is in the reason). Later, promote unless the new model is
    worse beyond the interval (its upper end below zero) or its ECE is above `ece_limit` (training.max_ece,
    or the sampling noise of a small holdout when that is larger: `evaluation.ece_noise_bound`). `force`
    overrides, and says so.
    """
    if force:
        return Decision(FORCED, "promoted with --force-promote, bypassing the gate")
    if champion is None:
        note = "" if new["ece"] <= ece_limit else f"; its ECE {new['ece']:.4f} is above the limit {ece_limit:.4f}"
        return Decision(PROMOTED, f"first model: there was no champion{note}")
    if new["ece"] > ece_limit:
        return Decision(NOT_PROMOTED, f"ECE {new['ece']:.4f} is above the limit {ece_limit:.4f}")
    interval = f"{gap['estimate']:+.4f} [{gap['ci_low']:+.4f}, {gap['ci_high']:+.4f}]"
    if gap["ci_high"] < 0:
        return Decision(
            NOT_PROMOTED,
            f"PR-AUC {new['pr_auc']:.4f} is below the champion pipeline's {champion['pr_auc']:.4f} on the same "
            f"window beyond the paired interval ({interval})",
        )
    return Decision(
        PROMOTED,
        f"PR-AUC {new['pr_auc']:.4f} against the champion pipeline's {champion['pr_auc']:.4f} on the same window "
        f"({interval}), ECE {new['ece']:.4f}",
    )


def uplift_earns_its_place(qini: dict[str, float] | None) -> tuple[bool, str]:
    """Whether a fitted uplift model replaces the prior: only when its held-out Qini coefficient's 95%
    bootstrap interval (`evaluation.qini_interval`) is above 0, i.e. it ranks members better than chance
    beyond the noise of the held-out offers. `qini`: `qini_interval`'s answer (estimate, ci_low, ci_high),
    None when there were no held-out offers with both arms. Returns the answer and the reason, in words."""
    if qini is None:
        return False, "no held-out offers with a control group to measure it on"
    interval = f"{qini['estimate']:.4f} [{qini['ci_low']:.4f}, {qini['ci_high']:.4f}]"
    if qini["ci_low"] > 0:
        return True, f"held-out Qini {interval} (95% interval) is above 0"
    return False, f"held-out Qini {interval} (95% interval) is not above 0: no better than chance beyond noise"
