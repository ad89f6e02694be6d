"""Buy-till-you-die models: BG/NBD for purchase counts and Gamma-Gamma for spend.

Fitted by maximum likelihood with scipy on the customer-base summary (frequency x, recency t_x, age T)
in weeks over distinct purchase days, with t_x and T measured to the last day before `as_of`
(Fader, Hardie & Lee 2005, "Counting your customers the easy way"; 2005, "RFM and CLV").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special

from retain.errors import RetainError

DAYS_PER_WEEK = 7.0


def summary_from_features(features: pd.DataFrame) -> pd.DataFrame:
    """The BTYD summary from point-in-time features (index member_id).

    Uses `frequency` (distinct purchase days), the integer day counts `first_purchase_days_ago` and
    `last_purchase_days_ago` (days from each purchase day to `as_of`) and `monetary_total`. Returns `x`
    (repeat purchase days), `t_x` and `T` in weeks, T measured to the last day before `as_of`, and
    `spend_per_day`: the mean spend per purchase day, the unit BG/NBD counts (a member with two orders a
    day spends twice as much per counted purchase as one with one).
    """
    arrays = summary_arrays(*(features[name].to_numpy(dtype=float) for name in SUMMARY_INPUTS))
    return pd.DataFrame(arrays, index=features.index)


SUMMARY_INPUTS = ("frequency", "first_purchase_days_ago", "last_purchase_days_ago", "monetary_total")


def summary_arrays(frequency, first_purchase_days_ago, last_purchase_days_ago, monetary_total) -> dict[str, np.ndarray]:
    """`summary_from_features` on arrays (the scoring path): x, t_x, T in weeks, spend_per_day."""
    frequency = np.asarray(frequency, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        spend_per_day = np.where(frequency > 0, np.asarray(monetary_total, dtype=float) / frequency, np.nan)
    return {
        "x": frequency - 1,
        "t_x": (first_purchase_days_ago - last_purchase_days_ago) / DAYS_PER_WEEK,
        "T": (first_purchase_days_ago - 1) / DAYS_PER_WEEK,
        "spend_per_day": spend_per_day,
    }


@dataclass(frozen=True)
class BGNBD:
    """Fitted BG/NBD parameters with standard errors from the Hessian of the log-likelihood."""

    r: float
    alpha: float
    a: float
    b: float
    standard_errors: tuple[float, float, float, float] = (np.nan,) * 4
    log_likelihood: float = np.nan

    @property
    def params(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    def p_alive(self, x, t_x, T) -> np.ndarray:
        """P(the customer is still alive at T | x, t_x, T)."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        log_ratio = (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
        odds = np.where(x > 0, self.a / (self.b + np.maximum(x, 1) - 1) * np.exp(np.minimum(log_ratio, 700)), 0.0)
        return 1.0 / (1.0 + odds)

    def p_any_purchase(self, x, t_x, T, horizon_weeks: float, alive: np.ndarray | None = None) -> np.ndarray:
        """P(at least one purchase in (T, T + horizon] | x, t_x, T); `alive`: `p_alive`, when known.

        Dropout happens only right after a purchase, so a customer alive at T who makes no purchase stays
        alive: P(none) = 1 - P(alive) + P(alive) * ((alpha + T) / (alpha + T + t)) ** (r + x).
        """
        x, T = np.asarray(x, dtype=float), np.asarray(T, dtype=float)
        alive = self.p_alive(x, t_x, T) if alive is None else alive
        none_if_alive = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + horizon_weeks)))
        return alive * (1.0 - none_if_alive)

    def expected_purchases(self, x, t_x, T, horizon_weeks: float, alive: np.ndarray | None = None) -> np.ndarray:
        """E[number of purchases in (T, T + horizon] | x, t_x, T] (Fader, Hardie & Lee 2005, eq. 10);
        `alive`: `p_alive`, when known."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        r, alpha, a, b, t = self.r, self.alpha, self.a, self.b, horizon_weeks
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        base = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
        return base * (self.p_alive(x, t_x, T) if alive is None else alive)


def bgnbd_log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood for params (r, alpha, a, b)."""
    r, alpha, a, b = params
    ln_a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    ln_a2 = special.betaln(a, b + x) - special.betaln(a, b)
    ln_a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore"):
        ln_a4 = np.where(x > 0, np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(alpha + t_x), -np.inf)
    return ln_a1 + ln_a2 + np.logaddexp(ln_a3, ln_a4)


def fit_bgnbd(summary: pd.DataFrame, with_errors: bool = True) -> BGNBD:
    """Fit BG/NBD by maximum likelihood on columns x, t_x, T (weeks).

    Identical (x, t_x, T) rows are fitted once with their count as weight (day-level data repeats a lot).
    `with_errors` adds standard errors from the Hessian (about 40 more likelihood evaluations).
    """
    if len(summary) < 10:
        raise RetainError(f"BG/NBD needs at least 10 customers with a purchase; got {len(summary)}.")
    grouped = summary.groupby(["x", "t_x", "T"]).size().reset_index(name="n")
    x, t_x, T, w = (grouped[col].to_numpy(dtype=float) for col in ("x", "t_x", "T", "n"))

    def negative(log_params: np.ndarray) -> float:
        with np.errstate(all="ignore"):  # the optimizer may step where the likelihood overflows
            value = -float(np.sum(w * bgnbd_log_likelihood(np.exp(log_params), x, t_x, T)))
        return value if np.isfinite(value) else np.inf

    start = np.log([0.5, max(float(np.mean(T)), 1.0), 1.0, 1.0])
    result = optimize.minimize(
        negative, start, method="L-BFGS-B", bounds=[(-10, 10)] * 4, options={"ftol": 1e-12, "gtol": 1e-8}
    )
    params = np.exp(result.x)
    errors = (
        _standard_errors(lambda p: -float(np.sum(w * bgnbd_log_likelihood(p, x, t_x, T))), params)
        if with_errors
        else np.full(4, np.nan)
    )
    return BGNBD(*params, standard_errors=tuple(errors), log_likelihood=-float(result.fun))


@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma spend parameters (p, q, gamma)."""

    p: float
    q: float
    gamma: float

    def expected_spend(self, x, spend_per_day) -> np.ndarray:
        """E[spend per purchase day | x repeat purchase days with mean spend m]: shrinks m towards the
        population."""
        x, m = np.asarray(x, dtype=float), np.asarray(spend_per_day, dtype=float)
        population = self.p * self.gamma / (self.q - 1)
        weight = self.p * x / (self.p * x + self.q - 1)
        return np.where(x > 0, (1 - weight) * population + weight * m, population)


def fit_gamma_gamma(summary: pd.DataFrame) -> GammaGamma:
    """Fit Gamma-Gamma on customers with repeat purchase days and a positive spend (x, spend_per_day)."""
    rows = summary[(summary["x"] > 0) & (summary["spend_per_day"] > 0)]
    if len(rows) < 10:
        raise RetainError(f"Gamma-Gamma needs at least 10 repeat customers with spend; got {len(rows)}.")
    x, m = rows["x"].to_numpy(dtype=float), rows["spend_per_day"].to_numpy(dtype=float)

    def negative(log_params: np.ndarray) -> float:
        p, q, v = np.exp(log_params)
        with np.errstate(all="ignore"):
            ll = (
                special.gammaln(p * x + q)
                - special.gammaln(p * x)
                - special.gammaln(q)
                + q * np.log(v)
                + (p * x - 1) * np.log(m)
                + p * x * np.log(x)
                - (p * x + q) * np.log(x * m + v)
            )
        value = -float(np.sum(ll))
        return value if np.isfinite(value) else np.inf

    result = optimize.minimize(
        negative,
        np.log([1.0, 2.0, float(np.mean(m))]),
        method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000},
    )
    return GammaGamma(*np.exp(result.x))


def _standard_errors(negative_ll, params: np.ndarray) -> np.ndarray:
    """Standard errors from a central-difference Hessian of the negative log-likelihood at `params`."""
    k = len(params)
    steps = 1e-4 * np.maximum(np.abs(params), 1e-3)
    hessian = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):

            def at(di: int, dj: int, i=i, j=j) -> float:
                shifted = params.copy()
                shifted[i] += di * steps[i]
                shifted[j] += dj * steps[j]
                return negative_ll(shifted)

            value = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / (4 * steps[i] * steps[j])
            hessian[i, j] = hessian[j, i] = value
    try:
        return np.sqrt(np.clip(np.diag(np.linalg.inv(hessian)), 0, None))
    except np.linalg.LinAlgError:
        return np.full(k, np.nan)
