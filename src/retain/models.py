"""The churn and repurchase models: LightGBM on point-in-time features plus BG/NBD features, calibrated
on a later time slice than the one it was fit on, and the baselines it must beat.

Frames in, frames out: every function takes feature frames indexed by `member_id`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import special
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss as sklearn_log_loss
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from retain import btyd, forest
from retain.config import LightGBMConfig
from retain.errors import RetainError

# Small, slow trees: on CDNOW (sparse, order-only) they beat BG/NBD at every cutoff tried where the
# defaults (31 leaves, rate 0.05) did not on PR-AUC; on the demo shop they are as good (bench/README.md).
# The values live in retain.toml ([lightgbm]); these are the defaults, for callers without a config.
RFM_COLUMNS = ["recency_days", "frequency", "monetary_mean"]
BTYD_COLUMNS = ["bgnbd_p_alive", "bgnbd_expected_purchases", "bgnbd_p_purchase"]
# An anchored model starts from BG/NBD's log-odds, read from P(any purchase in the horizon) or from the
# expected purchases E[X] as a Poisson P(at least one): on CDNOW E[X] ranks better, elsewhere P(any).
ANCHORS = ("bgnbd_p_purchase", "bgnbd_expected_purchases")
# The pooled candidate (`fit_pooled_model`): the mean of BG/NBD's log-odds and an RFM logistic regression's.
POOL_WEIGHT = 0.5


def add_btyd_features(
    features: pd.DataFrame, horizon_days: int, model: btyd.BGNBD | None = None
) -> tuple[pd.DataFrame, btyd.BGNBD]:
    """Add BG/NBD P(alive), expected purchases and P(any purchase) over the horizon.

    Without `model`, BG/NBD is fitted on these features (only what was known at their `as_of`), so the
    columns are point-in-time like every other feature. Returns the frame and the model used.
    """
    summary = btyd.summary_from_features(features)
    model = model or btyd.fit_bgnbd(summary, with_errors=False)
    arrays = {col: summary[col].to_numpy() for col in ("x", "t_x", "T")}
    return features.assign(**btyd_feature_arrays(model, arrays, horizon_days)), model


def btyd_feature_arrays(model: btyd.BGNBD, summary: dict[str, np.ndarray], horizon_days: int) -> dict[str, np.ndarray]:
    """The BG/NBD feature columns from the summary arrays x, t_x, T (weeks)."""
    x, t_x, T = summary["x"], summary["t_x"], summary["T"]
    weeks = horizon_days / btyd.DAYS_PER_WEEK
    alive = model.p_alive(x, t_x, T)
    return {
        "bgnbd_p_alive": alive,
        "bgnbd_expected_purchases": model.expected_purchases(x, t_x, T, weeks, alive),
        "bgnbd_p_purchase": model.p_any_purchase(x, t_x, T, weeks, alive),
    }


# Platt scaling is unregularised (C this large): two parameters fitted on thousands of rows, which the
# calibration slice decides; not a knob. (The RFM baseline keeps scikit-learn's default, as analysts run it.)
PLATT_C = 1e6


@dataclass
class TaskModel:
    """A fitted, calibrated model for one task: what the registry stores and the scorer loads."""

    task: str
    horizon_days: int
    feature_names: list[str]
    booster: lgb.Booster | None  # None: the pooled BG/NBD and logistic model, which has no trees
    calibrator: LogisticRegression  # Platt scaling of the raw score
    bgnbd: btyd.BGNBD
    metadata: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        """What kind of model this is, as /model, the export's summary and the registry tag name it:
        `lightgbm`, `lightgbm_anchored` (trees correcting BG/NBD), `bgnbd` (anchored, no tree earned
        its place: calibrated BG/NBD), or `bgnbd_logistic` (BG/NBD pooled with an RFM logistic regression)."""
        if self.linear:
            return "bgnbd_logistic"
        if not self.anchored:
            return "lightgbm"
        return "bgnbd" if self.metadata.get("trees") == 0 else "lightgbm_anchored"

    @property
    def anchor(self) -> str | None:
        """The BG/NBD column the model is anchored on (one of ANCHORS), or None."""
        return self.metadata.get("anchor")

    @property
    def anchored(self) -> bool:
        return self.anchor is not None

    @property
    def linear(self) -> dict | None:
        """The pooled model's logistic regression (`fit_pooled_model`), or None."""
        return self.metadata.get("linear")

    def raw_matrix(self, matrix: np.ndarray, anchor_p: np.ndarray | None = None) -> np.ndarray:
        """The uncalibrated log-odds: the trees, plus the BG/NBD anchor for an anchored model; for the
        pooled model, the mean of the anchor's and its logistic regression's log-odds.

        `anchor_p`: the anchor column's value over a longer horizon than the model trained on (a young
        shop, CDNOW's 273 days): the anchor then says that horizon's odds and the trees add the
        corrections they learnt, so the probability is extrapolated through BG/NBD, not relabelled."""
        anchor = None
        if self.anchored:
            value = matrix[:, self.feature_names.index(self.anchor)] if anchor_p is None else anchor_p
            anchor = btyd_anchor(value, self.task, self.anchor)
        if self.linear:
            return POOL_WEIGHT * anchor + (1 - POOL_WEIGHT) * linear_log_odds(self.linear, matrix, self.feature_names)
        trees = self.metadata.get("trees")  # None: every tree up to the early-stopping best
        threads = self.metadata.get("num_threads", 0)
        raw = np.zeros(len(matrix)) if trees == 0 else forest.raw_score(self.booster, matrix, trees, threads)
        return raw if anchor is None else raw + anchor

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        return self.raw_matrix(self.matrix(frame))

    def predict(self, frame: pd.DataFrame, anchor_p: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probability of the task's positive label for each row (`anchor_p`: see raw_matrix)."""
        return self.predict_matrix(self.matrix(frame), anchor_p)

    def predict_matrix(self, matrix: np.ndarray, anchor_p: np.ndarray | None = None) -> np.ndarray:
        """`predict` on the model's columns already in order: Platt's sigmoid written out, which skips
        scikit-learn's input checks (they cost more than the booster on a single member).

        Over a longer horizon than it trained on (`anchor_p`) an anchored model's log-odds are served
        uncalibrated: Platt's intercept is the shorter horizon's base rate and would pull every
        probability back to it, while the anchor already says the longer horizon's odds. On CDNOW's
        273 days (trained on 122) that took the anchored models' ECE from 0.031 and 0.035 to 0.028 and
        0.026, and the pooled model's from 0.036 to 0.019 (bench/README.md)."""
        raw = self.raw_matrix(matrix, anchor_p)
        if anchor_p is not None and self.anchored:
            return special.expit(raw)
        return special.expit(self.calibrator.coef_[0, 0] * raw + self.calibrator.intercept_[0])

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The registry's view: `probability` per row."""
        return pd.DataFrame({"probability": self.predict(frame)}, index=frame.index)

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per-row feature contributions to the raw score (log-odds), one column per feature."""
        # not taken from the booster's params: pass it, it halves the time
        threads = self.metadata.get("num_threads", 0)  # 0: LightGBM takes every core
        matrix, trees = self.matrix(frame), self.metadata.get("trees")
        weight = POOL_WEIGHT if self.linear else 1.0
        if self.linear:  # each term of the regression, against its training mean (0: standardised)
            values = np.zeros((len(matrix), len(self.feature_names)))
            terms = (1 - POOL_WEIGHT) * linear_terms(self.linear, matrix, self.feature_names)
            values[:, [self.feature_names.index(col) for col in self.linear["columns"]]] = terms
        elif trees == 0:
            values = np.zeros((len(matrix), len(self.feature_names)))
        else:
            values = forest.contributions(self.booster, matrix, trees, threads)[:, :-1]
        if self.anchored:  # the anchor's push, against its training mean, counts for BG/NBD's P(purchase)
            column = self.feature_names.index(self.anchor)
            anchor = btyd_anchor(matrix[:, column], self.task, self.anchor)
            values[:, column] += weight * (anchor - self.metadata.get("anchor_mean", 0.0))
        return pd.DataFrame(values, index=frame.index, columns=self.feature_names)

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's columns in its order as float64; a missing column is all missing values."""
        return frame.reindex(columns=self.feature_names).to_numpy(dtype=np.float64, na_value=np.nan)


def btyd_anchor(values: np.ndarray, task: str, column: str = ANCHORS[0]) -> np.ndarray:
    """BG/NBD's log-odds of the task's label from one of its columns over the horizon: P(any purchase),
    or the expected purchases E[X] read as a Poisson P(at least one) = 1 - exp(-E[X])."""
    values = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    p = values if column == "bgnbd_p_purchase" else -np.expm1(-values)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    logit = np.log(p) - np.log1p(-p)
    return -logit if task == "churn" else logit


def lightgbm_datasets(
    train: pd.DataFrame, y_train: pd.Series, calibration: pd.DataFrame, y_calibration: pd.Series, params: dict
) -> tuple[lgb.Dataset, lgb.Dataset]:
    """LightGBM's binned fitting and calibration sets, built once and shared by the candidates of a cutoff
    (building them is ~3 s on 500,000 rows; each candidate sets its own init_score). `params`: the
    training parameters (binning and its sampling seed must be the same as the training's)."""
    names = [col for col in train.columns if col != "snapshot_as_of"]
    x_train = train[names].to_numpy(dtype=np.float64, na_value=np.nan)
    x_cal = calibration[names].to_numpy(dtype=np.float64, na_value=np.nan)
    train_set = lgb.Dataset(x_train, y_train.to_numpy(), feature_name=names, params=params, free_raw_data=False)
    valid_set = lgb.Dataset(x_cal, y_calibration.to_numpy(), reference=train_set, params=params, free_raw_data=False)
    return train_set.construct(), valid_set.construct()


def require_both_labels(task: str, *slices: pd.Series) -> None:
    """Refuse, in one sentence, a training slice whose labels are all of one class (a young shop)."""
    if any(labels.nunique() < 2 for labels in slices):
        raise RetainError(
            f"The {task} labels have a single class in a training slice; the shop's history is too short."
        )


def fit_task_model(
    task: str,
    horizon_days: int,
    train: pd.DataFrame,
    y_train: pd.Series,
    calibration: pd.DataFrame,
    y_calibration: pd.Series,
    seed: int,
    bgnbd: btyd.BGNBD,
    anchor: str | None = None,
    settings: LightGBMConfig | None = None,
    datasets: tuple[lgb.Dataset, lgb.Dataset] | None = None,
) -> TaskModel:
    """Fit LightGBM on the older snapshots and calibrate it on the later slice (`datasets`: the same
    data as `lightgbm_datasets` built them with these settings and seed, when the caller has them).

    `anchor` (one of ANCHORS): the trees start from BG/NBD's log-odds (LightGBM's `init_score`) and learn only
    corrections, stopping early on the later slice; when BG/NBD alone scores that slice at least as well,
    no tree is kept and the model is BG/NBD, calibrated.

    Platt scaling rather than isotonic regression: isotonic steps tie members the booster ranks apart,
    which measurably lowered PR-AUC on CDNOW (0.645 to 0.631) for no gain in calibration error.
    """
    names = [col for col in train.columns if col != "snapshot_as_of"]
    require_both_labels(task, y_train, y_calibration)
    init_train = btyd_anchor(train[anchor].to_numpy(), task, anchor) if anchor else None
    init_cal = btyd_anchor(calibration[anchor].to_numpy(), task, anchor) if anchor else None
    settings = settings or LightGBMConfig()
    params = {**settings.params(), "seed": seed}
    train_set, valid_set = datasets or lightgbm_datasets(train, y_train, calibration, y_calibration, params)
    for dataset, init in ((train_set, init_train), (valid_set, init_cal)):
        dataset.set_field("init_score", init)  # None clears a shared set's (`set_init_score(None)` would not)
        dataset.init_score = init
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=settings.max_trees,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)],
    )
    metadata: dict = {"best_iteration": booster.best_iteration, "anchor": anchor, "num_threads": settings.num_threads}
    if anchor:
        y_cal = y_calibration.to_numpy()
        x_cal = valid_set.get_data()  # the matrix the calibration set was built from (kept: free_raw_data=False)
        with_trees = init_cal + forest.raw_score(booster, x_cal, booster.best_iteration, settings.num_threads)
        anchor_only = sklearn_log_loss(y_cal, special.expit(init_cal), labels=[0, 1])
        metadata["trees"] = (
            booster.best_iteration
            if sklearn_log_loss(y_cal, special.expit(with_trees), labels=[0, 1]) < anchor_only
            else 0
        )
        metadata["anchor_mean"] = float(init_train.mean())
    model = TaskModel(task, horizon_days, names, booster, LogisticRegression(C=PLATT_C), bgnbd, metadata)
    model.calibrator.fit(model.raw_score(calibration).reshape(-1, 1), y_calibration.to_numpy())
    return model


def fit_pooled_model(
    task: str,
    horizon_days: int,
    train: pd.DataFrame,
    y_train: pd.Series,
    calibration: pd.DataFrame,
    y_calibration: pd.Series,
    bgnbd: btyd.BGNBD,
) -> TaskModel:
    """BG/NBD pooled with an RFM logistic regression: the mean of their log-odds, calibrated by Platt
    scaling on the later slice. The regression is fitted on the older snapshots; BG/NBD is read from
    whichever of its columns (ANCHORS) ranks the later slice better, as a retention analyst would pick.

    Two smooth models with a handful of parameters between them: on a small or young log neither can
    overfit, and each covers the other's blind spot (BG/NBD knows nothing of spend; the regression
    knows no BTYD structure and extrapolates smoothly over members older than any it was fitted on).
    On CDNOW's classic split it ranks better than either alone and than the trees (bench/README.md).
    """
    require_both_labels(task, y_train, y_calibration)
    y_cal = y_calibration.to_numpy()
    anchor = max(ANCHORS, key=lambda col: roc_auc_score(y_cal, btyd_anchor(calibration[col].to_numpy(), task, col)))
    pipeline = fit_rfm_logistic(train, y_train)  # the RFM baseline's regression, kept as plain numbers
    scaler, regression = pipeline.named_steps["standardscaler"], pipeline.named_steps["logisticregression"]
    linear = {
        "columns": list(RFM_COLUMNS),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": regression.coef_[0].tolist(),
        "intercept": float(regression.intercept_[0]),
    }
    names = [col for col in train.columns if col != "snapshot_as_of"]
    init_train = btyd_anchor(train[anchor].to_numpy(), task, anchor)
    metadata = {"anchor": anchor, "linear": linear, "trees": 0, "anchor_mean": float(init_train.mean())}
    model = TaskModel(task, horizon_days, names, None, LogisticRegression(C=PLATT_C), bgnbd, metadata)
    model.calibrator.fit(model.raw_score(calibration).reshape(-1, 1), y_cal)
    return model


def linear_terms(linear: dict, matrix: np.ndarray, feature_names: list[str]) -> np.ndarray:
    """Each column's term in the pooled model's regression (log1p, standardised, times its coefficient,
    as `fit_rfm_logistic`'s pipeline computes it)."""
    x = matrix[:, [feature_names.index(col) for col in linear["columns"]]]
    z = (np.log1p(np.clip(np.nan_to_num(x, nan=0.0), 0, None)) - linear["mean"]) / linear["scale"]
    return z * np.asarray(linear["coef"])


def linear_log_odds(linear: dict, matrix: np.ndarray, feature_names: list[str]) -> np.ndarray:
    return linear_terms(linear, matrix, feature_names).sum(axis=1) + linear["intercept"]


def fit_recency_rule(train: pd.DataFrame, y: pd.Series, task: str) -> IsotonicRegression:
    """The rule a team already uses: the longer since the last order, the likelier the churn."""
    increasing = task == "churn"
    return IsotonicRegression(out_of_bounds="clip", increasing=increasing).fit(train["recency_days"], y)


def fit_rfm_logistic(train: pd.DataFrame, y: pd.Series):
    """Logistic regression on log recency, frequency and monetary value."""
    model = make_pipeline(FunctionTransformer(np.log1p), StandardScaler(), LogisticRegression(max_iter=1000))
    return model.fit(train[RFM_COLUMNS].clip(lower=0), y)


def bgnbd_score(features: pd.DataFrame, task: str) -> np.ndarray:
    """BG/NBD alone: P(at least one purchase in the horizon); for churn, one minus it."""
    p = features["bgnbd_p_purchase"].to_numpy()
    return 1.0 - p if task == "churn" else p


def bgnbd_expected_score(features: pd.DataFrame, task: str) -> np.ndarray:
    """BG/NBD scored by its expected purchases E[X] over the horizon (a ranking that can beat P(any
    purchase)), read as a Poisson probability of at least one: 1 - exp(-E[X]); for churn, exp(-E[X])."""
    p = -np.expm1(-features["bgnbd_expected_purchases"].to_numpy())
    return 1.0 - p if task == "churn" else p
