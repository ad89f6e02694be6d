"""The coupon's effect: how much a win-back coupon raises a member's probability of buying.

Learnt from the shop's past win-back offers and their held-out control groups (`offers.treated`):
a T-learner, one LightGBM classifier per arm on the member's features as of the day the offer was
sent, the treated arm also seeing the coupon's value when the history holds several values.

    uplift(member, coupon) = P(buy within winback.response_days | coupon) - P(buy | no coupon)

Only where the history supports it: the model keeps the range past campaigns' members had on a few
features (`winback.overlap_features`, between the `winback.overlap_quantile` quantiles); a member outside
it (one who bought last week, where every past campaign reached members lapsed for two months) gets the
prior, and the list says which (`uplift_source`): trees extrapolate flat, and noise times a large value
would top the ranking.

It also keeps the share of treated members who bought in the window and redeemed the coupon, which
`retain.decisions` turns into P(redeem) (members who would buy anyway redeem too: that is the cost
of discounting them). With too little history (fewer than `winback.min_treated` treated or
`winback.min_control` control offers) the model is the prior: a rise in P(buy) for a member still
buying, scaled per member by the chance the member is still there to be moved (1 - churn risk; see
`predict_tiers`), and `winback.redeem_rate`. The prior's rise is measured on the shop's past campaigns
against their control groups where that measure's 95% interval is above 0 (`campaign_prior`), else it is
the configured `winback.prior_uplift`; and apart for each lifecycle stage (`stage_priors`), which serves
that stage's members where its interval is above 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import special

from retain import contract as c
from retain import forest
from retain.config import Config
from retain.connection import dataset_connection
from retain.dataset import Dataset

COUPON_VALUE = "coupon_value"


def arm_params(config: Config, seed: int) -> dict:
    """Each arm's LightGBM parameters: [lightgbm] with the smaller trees and slower rate of [winback]."""
    w = config.winback
    return {
        **config.lightgbm.params(),
        "learning_rate": w.uplift_learning_rate,
        "num_leaves": w.uplift_num_leaves,
        "seed": seed,
    }


@dataclass
class UpliftModel:
    """Either a fitted T-learner (both boosters) or the configured prior (no boosters)."""

    feature_names: list[str]
    treated: lgb.Booster | None = None
    control: lgb.Booster | None = None
    uses_value: bool = False
    redeem_share: float = 1.0  # of treated members who bought in the window, the share who redeemed
    prior_uplift: float = 0.05
    prior_redeem: float = 0.9  # winback.redeem_rate's default; `prior_model` sets the configured one
    task: str = "uplift"
    metadata: dict = field(default_factory=dict)
    support: dict[str, list[float]] = field(default_factory=dict)  # feature -> [low, high] of past campaigns
    kept_per_buyer: float | None = None  # measured on past campaigns (`kept_per_buyer`); None: not measured
    # lifecycle stage -> the prior's rise measured on past campaigns' members in that stage (`stage_priors`);
    # a stage not in it gets `prior_uplift`
    stage_priors: dict[str, float] = field(default_factory=dict)

    def kept(self, churn: np.ndarray) -> np.ndarray | float:
        """Members a coupon keeps per extra buyer: measured on the shop's campaigns where they allow it,
        else each member's churn risk (the chance the extra buyer was on the way out)."""
        measured = self.__dict__.get("kept_per_buyer")  # a model registered before this has none
        return churn if measured is None else measured

    @property
    def kind(self) -> str:
        return "prior" if self.treated is None else "t_learner"

    def supported(self, matrix: np.ndarray) -> np.ndarray:
        """Per row of `matrix` (the model's feature columns, in order): inside the range of past campaigns
        on every overlap feature (a missing value counts as inside). All False for the prior."""
        if self.treated is None:
            return np.zeros(len(matrix), dtype=bool)
        inside = np.ones(len(matrix), dtype=bool)
        # A model registered before the overlap rule has no support: every member is inside, as then.
        for name, (low, high) in self.__dict__.get("support", {}).items():
            values = matrix[:, self.feature_names.index(name)]
            inside &= np.isnan(values) | ((values >= low) & (values <= high))
        return inside

    def sources(self, matrix: np.ndarray) -> np.ndarray:
        """`model` where the learnt uplift is used, `prior` where the configured prior is."""
        return np.where(self.supported(matrix), "model", "prior").astype(object)

    def predict_matrix(self, matrix: np.ndarray, coupon_value: float) -> np.ndarray:
        """The uplift per row of `matrix` (the model's feature columns, in order) for one coupon value."""
        return self.predict_tiers(matrix, [coupon_value])[0]

    def prior(self, n: int, reachable: np.ndarray | None = None, stage: np.ndarray | None = None) -> np.ndarray:
        """The prior uplift of `n` members: the rise of their lifecycle `stage` where past campaigns measured
        one (`stage_priors`), else `prior_uplift`, times `reachable` where given."""
        rise = np.full(n, self.prior_uplift)
        if stage is not None:
            for name, value in self.__dict__.get("stage_priors", {}).items():  # none on an older model
                rise[np.asarray(stage) == name] = value
        return rise if reachable is None else rise * np.asarray(reachable)

    def predict_tiers(
        self,
        matrix: np.ndarray,
        coupon_values: list[float],
        reachable: np.ndarray | None = None,
        stage: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """The uplift per row for each coupon value (the control arm is predicted once).

        `reachable`: per row, the chance the member is still there for a coupon to move (the scorer passes
        1 - churn risk). The prior is scaled by it: the prior's rise is that of a member who is still
        buying, and a coupon moves nobody who has gone (a flat prior sent most coupons to lost members and
        valued them 30 times their worth; bench/README.md, issue 12). `stage`: per row, the lifecycle stage
        name (`decisions.STAGES`), which picks the rise measured for that stage (`prior`)."""
        n = len(matrix)
        prior = self.prior(n, reachable, stage)
        if self.treated is None:
            return [prior for _ in coupon_values]
        inside = self.supported(matrix)
        p_control = special.expit(forest.raw_score(self.control, matrix))
        if not self.uses_value:
            learnt = special.expit(forest.raw_score(self.treated, matrix)) - p_control
            return [np.where(inside, learnt, prior)] * len(coupon_values)
        with_value = np.empty((n, matrix.shape[1] + 1))  # one copy; only the value column changes per tier
        with_value[:, :-1] = matrix
        uplifts = []
        for value in coupon_values:
            with_value[:, -1] = value
            learnt = special.expit(forest.raw_score(self.treated, with_value)) - p_control
            uplifts.append(np.where(inside, learnt, prior))
        return uplifts

    def p_redeem(self, p_buy_anyway: np.ndarray, uplift: np.ndarray) -> np.ndarray:
        """P(redeem): P(buy in the window with the coupon) x the share of such buyers who redeem."""
        share = self.prior_redeem if self.treated is None else self.redeem_share
        return np.clip(p_buy_anyway + uplift, 0.0, 1.0) * share

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The registry's view: features plus `coupon_value` per row in, `uplift` out."""
        matrix = frame.reindex(columns=self.feature_names).to_numpy(dtype=np.float64, na_value=np.nan)
        uplift = np.empty(len(frame))
        values = frame[COUPON_VALUE].to_numpy(dtype=float)
        for value in np.unique(values):
            rows = values == value
            uplift[rows] = self.predict_matrix(matrix[rows], float(value))
        return pd.DataFrame({"uplift": uplift}, index=frame.index)


def prior_model(
    config: Config, feature_names: list[str], reason: str, prior_uplift: float | None = None
) -> UpliftModel:
    """The prior alone: `prior_uplift` (measured on past campaigns, `campaign_prior`) or, without it, the
    configured `winback.prior_uplift`."""
    w = config.winback
    prior = w.prior_uplift if prior_uplift is None else prior_uplift
    return UpliftModel(feature_names, prior_uplift=prior, prior_redeem=w.redeem_rate, metadata={"prior_reason": reason})


def campaign_prior(offers: pd.DataFrame) -> dict[str, float] | None:
    """The prior uplift measured on the shop's past campaigns: the rise in P(buy in the window) a coupon
    brings a member still there to be moved, the unit `UpliftModel.predict_tiers` scales by 1 - churn risk.

        k = sum over campaigns of n_treated x (treated buying rate - control buying rate)
            / sum over treated members of reach

    `offers`: `sent_day`, `treated`, `bought` and `reach` (1 - the churn risk of the member on the day the
    offer was sent). Each campaign (day) is compared with its own control group, so a campaign mix that
    changes over time does not bias k; campaigns without a control group are left out. The 95% interval
    treats the reach as known (normal approximation of each campaign's difference of rates). None without
    any campaign with both arms or reach.
    """
    lift = variance = reach = 0.0
    for _, campaign in offers.groupby("sent_day", sort=True):
        treated = campaign[c.TREATED].to_numpy(dtype=bool)
        bought = campaign["bought"].to_numpy(dtype=float)
        n_t, n_c = int(treated.sum()), int((~treated).sum())
        if n_t == 0 or n_c == 0:
            continue
        p_t, p_c = bought[treated].mean(), bought[~treated].mean()
        lift += n_t * (p_t - p_c)
        variance += n_t**2 * (p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
        reach += float(np.nansum(campaign["reach"].to_numpy(dtype=float)[treated]))
    if reach <= 0:
        return None
    k, half = lift / reach, 1.96 * np.sqrt(variance) / reach
    return {"estimate": float(k), "ci_low": float(k - half), "ci_high": float(k + half)}


def stage_priors(offers: pd.DataFrame) -> dict[str, dict[str, float]]:
    """`campaign_prior` measured apart on the offers of each lifecycle stage (`offers["stage"]`, the member's
    stage on the day the offer was sent): stage -> estimate and 95% interval. The rise per unit of reach is
    not the same in every stage (on the demo shop, at-risk members 0.083, sleeping ones 0.100, bench/README.md,
    issue 12); the caller keeps a stage's estimate where its interval is above 0."""
    measured = {}
    for stage, rows in offers.groupby("stage", sort=True):
        prior = campaign_prior(rows)
        if prior is not None:
            measured[str(stage)] = prior
    return measured


def offer_outcomes(
    dataset: Dataset, since: pd.Timestamp, until: pd.Timestamp, response_days: int, retention_days: int = 0
) -> pd.DataFrame:
    """Win-back offers sent in [since, until - response_days] with their outcome: `bought` (a paid order
    within `response_days` of sending) and `redeemed`. Columns member_id, sent_day, treated, value.

    With `retention_days`, also `retained`: a paid order in the `retention_days` after the response window
    (the member is still buying once the coupon's window is over), missing where that period has not
    ended by `until`."""
    if not dataset.has("offers"):
        return pd.DataFrame(columns=[c.MEMBER_ID, "sent_day", c.TREATED, c.VALUE, "bought", "redeemed", "retained"])
    response, retention = int(response_days), int(retention_days)
    with dataset_connection(dataset) as (con, _):
        return con.execute(
            f"""
            WITH sent AS (
                SELECT offer_id, member_id, sent_at, treated, value, redeemed_at,
                       sent_at + INTERVAL {response} DAY AS window_end,
                       sent_at + INTERVAL {response + retention} DAY AS retention_end
                FROM offers
                WHERE offer_type = 'winback_coupon' AND sent_at >= ?
                  AND sent_at + INTERVAL {response} DAY <= ?
            )
            SELECT s.member_id, date_trunc('day', s.sent_at) AS sent_day, s.treated, s.value,
                   count(o.member_id) FILTER (WHERE o.ordered_at < s.window_end) > 0 AS bought,
                   coalesce(s.redeemed_at < s.window_end, FALSE) AS redeemed,
                   CASE WHEN {retention} > 0 AND s.retention_end <= ?
                        THEN count(o.member_id) FILTER (WHERE o.ordered_at >= s.window_end) > 0 END AS retained
            FROM sent s
            LEFT JOIN orders o
              ON o.member_id = s.member_id AND o.ordered_at >= s.sent_at AND o.ordered_at < s.retention_end
             AND coalesce(o.status, 'paid') = 'paid'
            GROUP BY s.offer_id, s.member_id, s.sent_at, s.treated, s.value, s.redeemed_at, s.window_end,
                     s.retention_end
            ORDER BY s.sent_at, s.member_id, s.offer_id
            """,
            [pd.Timestamp(since).to_pydatetime(), *[pd.Timestamp(until).to_pydatetime()] * 2],
        ).df()


def kept_per_buyer(offers: pd.DataFrame, seed: int = 0, rounds: int = 500) -> dict[str, float] | None:
    """How many members a coupon keeps for each extra buyer it brings, measured on past campaigns:

        kept = sum over campaigns of n_treated x (treated - control share `retained`)
               / sum over campaigns of n_treated x (treated - control share `bought`)

    (`offer_outcomes` with `retention_days`: still buying in the period after the coupon's window). The
    worth of an extra buyer is then their order plus `kept` x the value of a member who stays
    (`ValueModel.value_and_worth`). Each campaign is compared with its own control group; campaigns without
    one, or whose retention period has not ended, are left out. The 95% interval resamples whole campaigns.
    None when the campaigns show no extra buyers (the ratio means nothing then), estimate clipped at 0."""
    closed = offers[offers["retained"].notna()] if "retained" in offers else offers.iloc[:0]
    per_campaign = []
    for _, campaign in closed.groupby("sent_day", sort=True):
        treated = campaign[c.TREATED].to_numpy(dtype=bool)
        if treated.all() or not treated.any():
            continue
        extra = [
            treated.sum()
            * (
                campaign[col].to_numpy(dtype=float)[treated].mean()
                - campaign[col].to_numpy(dtype=float)[~treated].mean()
            )
            for col in ("retained", "bought")
        ]
        per_campaign.append(extra)
    if not per_campaign:
        return None
    kept, bought = np.asarray(per_campaign).T
    if bought.sum() <= 0:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(kept), size=(rounds, len(kept)))
    ratios = kept[draws].sum(axis=1) / np.where(bought[draws].sum(axis=1) > 0, bought[draws].sum(axis=1), np.nan)
    low, high = np.nanquantile(ratios, [0.025, 0.975])
    return {"estimate": max(float(kept.sum() / bought.sum()), 0.0), "ci_low": float(low), "ci_high": float(high)}


def training_frame(
    outcomes: pd.DataFrame, features_at: Callable[[pd.Timestamp], pd.DataFrame]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each offer's member features as of the offer's day (strictly before it was sent), and the offers
    whose member had features then (a member with no paid order before the offer has none)."""
    parts, kept = [], []
    for day, group in outcomes.groupby("sent_day", sort=True):
        features = features_at(pd.Timestamp(day))
        known = group[group[c.MEMBER_ID].isin(features.index)]
        parts.append(features.loc[known[c.MEMBER_ID]].reset_index(drop=True))
        kept.append(known)
    if not parts:
        return pd.DataFrame(), outcomes.iloc[:0]
    return pd.concat(parts, ignore_index=True), pd.concat(kept, ignore_index=True)


def fit_uplift(
    x: pd.DataFrame, offers: pd.DataFrame, config: Config, seed: int, prior_uplift: float | None = None
) -> UpliftModel:
    """The T-learner on offers (`treated`, `value`, `bought`, `redeemed`) and their features `x` (row-aligned);
    the prior when there are too few treated or control offers. `prior_uplift`: the prior outside the
    history's reach (`campaign_prior`'s estimate; default the configured `winback.prior_uplift`)."""
    names = list(x.columns)
    treated = offers[c.TREATED].to_numpy(dtype=bool)
    bought = offers["bought"].to_numpy(dtype=int)
    w = config.winback
    if treated.sum() < w.min_treated or (~treated).sum() < w.min_control:
        return prior_model(
            config,
            names,
            f"{int(treated.sum())} treated and {int((~treated).sum())} control offers in the history "
            f"(needs {w.min_treated} and {w.min_control})",
            prior_uplift,
        )
    matrix = x.to_numpy(dtype=np.float64, na_value=np.nan)
    values = offers[c.VALUE].to_numpy(dtype=float)
    uses_value = len(np.unique(values[treated & ~np.isnan(values)])) > 1
    params, rounds = arm_params(config, seed), config.winback.uplift_rounds
    treated_x = np.column_stack([matrix[treated], values[treated]]) if uses_value else matrix[treated]
    treated_names = [*names, COUPON_VALUE] if uses_value else names
    treated_booster = lgb.train(params, lgb.Dataset(treated_x, bought[treated], feature_name=treated_names), rounds)
    control_booster = lgb.train(params, lgb.Dataset(matrix[~treated], bought[~treated], feature_name=names), rounds)
    buyers = treated & (bought == 1)
    redeem_share = float(offers["redeemed"].to_numpy()[buyers].mean()) if buyers.any() else w.redeem_rate
    q = w.overlap_quantile
    support = {
        name: [float(v) for v in np.nanquantile(matrix[:, names.index(name)], [q, 1 - q])]
        for name in w.overlap_features
        if name in names and not np.isnan(matrix[:, names.index(name)]).all()
    }
    return UpliftModel(
        names,
        treated_booster,
        control_booster,
        uses_value=uses_value,
        redeem_share=redeem_share,
        prior_uplift=w.prior_uplift if prior_uplift is None else prior_uplift,
        prior_redeem=w.redeem_rate,
        metadata={"treated_offers": int(treated.sum()), "control_offers": int((~treated).sum())},
        support=support,
    )


def predict_offers(model: UpliftModel, x: pd.DataFrame, offers: pd.DataFrame) -> np.ndarray:
    """Uplift of each offer at the value it was sent with."""
    frame = x.reindex(columns=model.feature_names).assign(**{COUPON_VALUE: offers[c.VALUE].to_numpy(dtype=float)})
    return model.predict_frame(frame)["uplift"].to_numpy()
