"""The one module that imports MLflow: runs, plots, registered models, aliases and tags.

Models are registered as `retain-churn`, `retain-repurchase`, `retain-uplift` and `retain-value`; the
alias `champion` is what the scorer loads (`models:/retain-churn@champion`), `challenger` marks a version
the gate kept back. Everything else in retain passes plain objects (a `TaskModel`, an `UpliftModel`, a
`ValueModel`, dicts of metrics, matplotlib figures).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from retain.config import MlflowConfig
from retain.errors import RetainError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import mlflow  # noqa: E402  (telemetry is switched off before the import)
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

CHAMPION, CHALLENGER = "champion", "challenger"
logging.getLogger("mlflow").setLevel(logging.ERROR)  # the job reports what matters itself
REQUIREMENTS = ("lightgbm", "scikit-learn", "scipy", "numpy", "pandas")


def model_name(task: str) -> str:
    return f"retain-{task}"


class RetainModel(mlflow.pyfunc.PythonModel):
    """The MLflow wrapper of a retain model (`TaskModel`, `UpliftModel`, `ValueModel`): `predict` is the
    model's `predict_frame` (a probability, an uplift and P(redeem), a value per row)."""

    def __init__(self, model):
        self.model = model

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict_frame(model_input)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_id: str | None


def registered(v) -> RegisteredVersion:
    """An MLflow model version as the project reads it."""
    return RegisteredVersion(v.name, str(v.version), tuple(v.aliases), dict(v.tags), v.run_id)


class Registry:
    """Tracking and registry in the SQLite store named by the config (artifacts beside it)."""

    def __init__(self, config: MlflowConfig):
        self.config = config
        mlflow.set_tracking_uri(config.tracking_uri)
        mlflow.set_registry_uri(config.tracking_uri)
        if config.tracking_uri.startswith("sqlite:///"):
            Path(config.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)

    def experiment_id(self, task: str) -> str:
        name = f"retain-{task}"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = Path(self.config.artifact_location).resolve() / task
        return self.client.create_experiment(name, artifact_location=location.as_uri())

    @contextlib.contextmanager
    def run(self, task: str, run_name: str) -> Iterator[str]:
        with mlflow.start_run(experiment_id=self.experiment_id(task), run_name=run_name) as active:
            yield active.info.run_id

    def log_params(self, params: dict) -> None:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def log_figure(self, figure, path: str) -> None:
        mlflow.log_figure(figure, path)

    def log_dict(self, data: dict, path: str) -> None:
        mlflow.log_dict(data, path)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_model(self, model, input_example: pd.DataFrame) -> str:
        """Log and register `model` as retain-<model.task> (with signature and input example); return the
        new version."""
        example = input_example.astype("float64")
        signature = infer_signature(example, model.predict_frame(example))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=RetainModel(model),
            signature=signature,
            input_example=example,
            registered_model_name=model_name(model.task),
            pip_requirements=[f"{pkg}=={metadata.version(pkg)}" for pkg in REQUIREMENTS],
        )
        return str(info.registered_model_version)

    def tag_version(self, task: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model_name(task), version, key, str(value))

    def set_alias(self, task: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name(task), alias, version)

    def missing_champions(self, names: tuple[str, ...]) -> list[str]:
        """The registered names among `names` (tasks) that have no champion yet."""
        return [model_name(name) for name in names if self.version_by_alias(name) is None]

    def version_by_alias(self, task: str, alias: str = CHAMPION) -> RegisteredVersion | None:
        try:
            return registered(self.client.get_model_version_by_alias(model_name(task), alias))
        except MlflowException:
            return None

    def version(self, task: str, version: str) -> RegisteredVersion | None:
        """One version of a task's model with its tags (None when the registry has no such version)."""
        try:
            return registered(self.client.get_model_version(model_name(task), str(version)))
        except MlflowException:
            return None

    def load_dict(self, run_id: str, path: str) -> dict | None:
        """A JSON artifact of a run (`log_dict`), or None when the run has none by that name."""
        try:
            return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
        except (MlflowException, OSError):
            return None

    def load(self, task: str, alias: str = CHAMPION) -> tuple[object, RegisteredVersion] | None:
        """The model under `alias` (by alias, never by run id), or None when there is none yet."""
        version = self.version_by_alias(task, alias)
        if version is None:
            return None
        try:
            wrapper = mlflow.pyfunc.load_model(f"models:/{model_name(task)}@{alias}").unwrap_python_model()
        except (MlflowException, OSError) as exc:
            raise RetainError(
                f"Could not load {model_name(task)}@{alias} from {self.config.tracking_uri}: {exc}"
            ) from None
        return wrapper.model, version

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)
