"""Scoring lives here, once: the service and the daily export both call `Scorer`, so they can never
disagree on a member's score.

`Scorer.score(features, as_of)` takes point-in-time features (index `member_id`) and returns, per member,
the churn risk, the repurchase probability and the decision without a budget (`retain.decisions`);
`reasons` adds the top three features that pushed each member's churn risk (LightGBM per-row
contributions), with readable labels. The scorer holds the four champions: churn, repurchase, uplift
and value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retain import btyd, decisions, models, promotions, reason_text
from retain.config import Config
from retain.uplift import UpliftModel
from retain.value import ValueModel

TASKS = ("churn", "repurchase")
MODELS = (*TASKS, "uplift", "value")
REASONS_PER_MEMBER = 3


def model_input(model: models.TaskModel, features: pd.DataFrame, as_of: pd.Timestamp, config: Config) -> pd.DataFrame:
    """A task model's input: features plus BG/NBD features at its horizon with its stored fit, and the
    promotion days ahead (the calendar)."""
    frame, _ = models.add_btyd_features(features, model.horizon_days, model.bgnbd)
    return frame.assign(**promotions.days_ahead(as_of, model.horizon_days, config.data.promotion_windows))


def task_probability(
    model: models.TaskModel,
    column: decisions.Columns,
    summary: dict[str, np.ndarray],
    as_of: pd.Timestamp,
    config: Config,
) -> np.ndarray:
    """A task model's probability per member from the features (`column`) and their BTYD `summary` arrays:
    the model's matrix (features plus BG/NBD features at its horizon with its stored fit, and the
    promotion days ahead) built without pandas copies (measured several times faster), and the anchor
    column over the task's configured horizon when an anchored model trained on a shorter one (see
    `TaskModel.raw_matrix`)."""
    horizon = getattr(config.labels, f"{model.task}_horizon_days")
    extra = {
        **models.btyd_feature_arrays(model.bgnbd, summary, model.horizon_days),
        **promotions.days_ahead(as_of, model.horizon_days, config.data.promotion_windows),
    }
    matrix = column.matrix(model.feature_names)
    for j, name in enumerate(model.feature_names):
        if name in extra:
            matrix[:, j] = extra[name]
    anchor = None
    if model.anchored and model.horizon_days != horizon:
        anchor = models.btyd_feature_arrays(model.bgnbd, summary, horizon)[model.anchor]
    return model.predict_matrix(matrix, anchor)


@dataclass
class Scorer:
    """The champion models of both tasks and the config they decide with."""

    churn: models.TaskModel
    repurchase: models.TaskModel
    uplift: UpliftModel
    value: ValueModel
    versions: dict[str, str]
    config: Config
    tags: dict[str, dict[str, str]] | None = None  # each champion's registry tags (metrics, calibration)

    @classmethod
    def from_registry(cls, registry, config: Config) -> Scorer:
        """Load the four champions by alias through the registry module."""
        from retain.errors import RetainError

        loaded = {}
        for name in MODELS:
            found = registry.load(name)
            if found is None:
                raise RetainError(f"There is no champion model for {name} yet; run `make train` first.")
            loaded[name] = found
        return cls(
            **{name: loaded[name][0] for name in MODELS},
            versions={f"retain-{name}": loaded[name][1].version for name in MODELS},
            config=config,
            tags={name: loaded[name][1].tags for name in MODELS},
        )

    def family(self, name: str) -> str:
        """The kind of each champion: lightgbm for the task models, the uplift model's kind, btyd for value."""
        if name in TASKS:
            return self.model(name).family
        return self.uplift.kind if name == "uplift" else "bgnbd_gamma_gamma"

    def model(self, task: str) -> models.TaskModel:
        return self.churn if task == "churn" else self.repurchase

    def model_input(self, features: pd.DataFrame, as_of: pd.Timestamp, task: str) -> pd.DataFrame:
        """The task model's input (`model_input`)."""
        return model_input(self.model(task), features, as_of, self.config)

    def score(self, features: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
        """Per member (index `member_id`): `churn_risk`, `repurchase_prob`, and the decision without a
        budget: `segment`, `action`, `offer_detail`, `expected_value`, `cost`, `coupon_uplift`, `uplift_source`,
        `value`."""
        column = decisions.Columns(features)
        summary = btyd.summary_arrays(*(column(name) for name in btyd.SUMMARY_INPUTS))
        churn = task_probability(self.churn, column, summary, as_of, self.config)
        repurchase = task_probability(self.repurchase, column, summary, as_of, self.config)
        decided = decisions.decide_arrays(column, summary, churn, repurchase, self.value, self.uplift, self.config)
        return pd.DataFrame({"churn_risk": churn, "repurchase_prob": repurchase, **decided}, index=features.index)

    def reasons(self, features: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
        """The three features that pushed each member's churn risk most, with value and direction.

        Columns reason_{1,2,3}_feature, _value, _direction ("raises" or "lowers" the churn risk), and
        reason_{1,2,3}: the reason as a sentence in `decisions.language`.
        """
        frame = self.model_input(features, as_of, "churn")
        contributions = self.churn.contributions(frame)
        values = contributions.to_numpy()
        top = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :REASONS_PER_MEMBER]
        names = np.asarray(self.churn.feature_names)
        rows = np.arange(len(frame))[:, None]
        inputs = frame.reindex(columns=self.churn.feature_names).to_numpy(dtype=np.float64, na_value=np.nan)
        language, categories = self.config.decisions.language, self.config.data.categories
        out = {}
        for k in range(REASONS_PER_MEMBER):
            feature = names[top[:, k]]
            value = inputs[rows[:, 0], top[:, k]]
            direction = np.where(values[rows[:, 0], top[:, k]] > 0, "raises", "lowers")
            out[f"reason_{k + 1}_feature"], out[f"reason_{k + 1}_value"] = feature, value
            out[f"reason_{k + 1}_direction"] = direction
            parts = zip(feature, value, direction, strict=True)
            out[f"reason_{k + 1}"] = [reason_text.describe(f, v, d, language, categories) for f, v, d in parts]
        return pd.DataFrame(out, index=frame.index)
