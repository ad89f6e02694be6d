"""Member value: the margin a member is expected to bring over the next `decisions.value_horizon_days`.

value = BG/NBD expected purchase days over the horizon x Gamma-Gamma expected spend per purchase day x
`decisions.margin_rate`: one unit end to end (a member with several orders a day is not undervalued).
Both BTYD models are fitted on the features as of the training cutoff by the training job and registered
as `retain-value`, like the classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from retain import btyd


@dataclass
class ValueModel:
    """Fitted BG/NBD and Gamma-Gamma models and the horizon and margin they turn into a value."""

    bgnbd: btyd.BGNBD
    gamma_gamma: btyd.GammaGamma
    horizon_days: int
    margin_rate: float
    task: str = "value"
    metadata: dict = field(default_factory=dict)

    def value(self, summary: dict[str, np.ndarray]) -> np.ndarray:
        """Expected margin per member from the BTYD summary arrays (x, t_x, T, spend_per_day)."""
        return self.value_and_worth(summary)[0]

    def order_worth(self, summary: dict[str, np.ndarray], kept: np.ndarray | float | None = None) -> np.ndarray:
        """What one more buyer in a coupon's window is worth: the order's margin (Gamma-Gamma spend x
        margin_rate), plus `kept` x the margin of a member who stays over the horizon, buying as before
        they lapsed (BG/NBD's expected purchase days at the rate up to their last one: a member won back
        buys as they did, not at the rate their silence since implies).

        `kept`: members kept per extra buyer, measured on the shop's campaigns (`uplift.kept_per_buyer`), or
        per member the churn risk (decisions pass one of them); by default BG/NBD's 1 - P(alive). This is
        the unit the uplift (extra P(an order in the window)) multiplies; not a year of value."""
        return self.value_and_worth(summary, kept)[1]

    def value_and_worth(
        self, summary: dict[str, np.ndarray], kept: np.ndarray | float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`value` and `order_worth` from one pass over the BTYD arithmetic (the scorer needs both)."""
        x, t_x, T = summary["x"], summary["t_x"], summary["T"]
        weeks = self.horizon_days / btyd.DAYS_PER_WEEK
        alive = self.bgnbd.p_alive(x, t_x, T)
        certain = np.ones_like(alive)
        spend = self.gamma_gamma.expected_spend(x, summary["spend_per_day"])
        value = self.bgnbd.expected_purchases(x, t_x, T, weeks, alive=certain) * alive * spend * self.margin_rate
        as_before = self.bgnbd.expected_purchases(x, t_x, t_x, weeks, alive=certain)
        kept = 1.0 - alive if kept is None else kept
        return value, spend * self.margin_rate * (1.0 + kept * as_before)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The registry's view: features in, `value` out."""
        arrays = btyd.summary_arrays(*(frame[name].to_numpy(dtype=float) for name in btyd.SUMMARY_INPUTS))
        return pd.DataFrame({"value": self.value(arrays)}, index=frame.index)

    @property
    def feature_names(self) -> list[str]:
        return list(btyd.SUMMARY_INPUTS)


def fit_value_model(features: pd.DataFrame, horizon_days: int, margin_rate: float) -> ValueModel:
    """Fit BG/NBD and Gamma-Gamma on point-in-time features (one row per member with a paid order)."""
    summary = btyd.summary_from_features(features)
    bgnbd = btyd.fit_bgnbd(summary, with_errors=False)
    gamma_gamma = btyd.fit_gamma_gamma(summary)
    return ValueModel(bgnbd, gamma_gamma, horizon_days, margin_rate, metadata={"members": len(features)})
