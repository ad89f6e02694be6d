"""One configuration object, read once at the edge (CLI, service start-up) and passed down.

`retain.toml` holds the settings; any key can be overridden by an environment variable
`RETAIN_<SECTION>_<KEY>` (for example `RETAIN_LABELS_CHURN_HORIZON_DAYS=60`). A wrong key or a
wrong type is a `ConfigError` naming the key. Secrets are read from the environment only.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

from retain import files
from retain.errors import RetainError

DEFAULT_CONFIG_PATH = Path("retain.toml")
ENV_PREFIX = "RETAIN_"
# Environment variables with the prefix that are not config overrides.
NON_OVERRIDE_ENV = {"RETAIN_API_TOKEN", "RETAIN_CONFIG", "RETAIN_DEBUG"}  # read elsewhere, not config keys
SECRET_KEYS = {"api_token", "token", "password", "secret"}


class ConfigError(RetainError):
    """The configuration file or an override is wrong."""


DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_BUCKETS = 64


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "data/demo"
    currency: str = "CNY"
    timezone: str = DEFAULT_TIMEZONE  # the shop's zone: ingest converts timestamps with a UTC offset to it
    buckets: int = DEFAULT_BUCKETS  # member buckets each table is written in (retain.dataset)
    categories: dict[str, str] = field(default_factory=dict)
    replenishment_categories: list[str] = field(default_factory=list)
    promotion_windows: list[list[str]] = field(default_factory=list)
    refund_delay_days: int = 14  # a refund without refunded_at counts from its order date plus this

    def __post_init__(self):
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"data.timezone = {self.timezone!r} is not a time zone; use a name such as "
                f"'Asia/Shanghai', 'Europe/London' or 'UTC'."
            ) from None


@dataclass(frozen=True)
class IngestConfig:
    max_bad_share: float = 0.01


@dataclass(frozen=True)
class LabelsConfig:
    churn_horizon_days: int = 90
    repurchase_horizon_days: int = 30

    @property
    def horizons(self) -> dict[str, int]:
        """Each task's label window in days."""
        return {"churn": self.churn_horizon_days, "repurchase": self.repurchase_horizon_days}


@dataclass(frozen=True)
class TrainingConfig:
    min_snapshots: int = 3
    max_snapshots: int = 15
    calibration_snapshots: int = 3
    max_ece: float = 0.03
    min_repeat_members: int = 200
    seed: int = 7
    min_history_days: int = 60  # the earliest snapshot leaves this much order history before it
    max_rows: int = 0  # past this many stacked training rows, fit on a member sample that fits (0: no limit)


# The model candidates, simplest first (`retain.selection` says what each is). By default a shop
# considers three: `lightgbm_anchored_expected` was never the one served where it was measured (the
# demo shop, a BG/NBD-generated shop, CDNOW) and costs a quarter of the training time.
CANDIDATES = ("bgnbd_logistic", "lightgbm_anchored", "lightgbm_anchored_expected", "lightgbm")
DEFAULT_CANDIDATES = ("bgnbd_logistic", "lightgbm_anchored", "lightgbm")


@dataclass(frozen=True)
class SelectionConfig:
    """The candidates a task's model is chosen from, simplest first (see `retain.selection`), and the
    bootstrap rounds of the paired interval within which the simpler one is kept."""

    candidates: list[str] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    bootstrap_rounds: int = 300

    def __post_init__(self):
        if not self.candidates or not set(self.candidates) <= set(CANDIDATES):
            raise ConfigError(
                f"Config key selection.candidates must name some of {list(CANDIDATES)}, got {self.candidates}."
            )
        if self.bootstrap_rounds < 50:
            raise ConfigError(
                f"Config key selection.bootstrap_rounds must be at least 50, got {self.bootstrap_rounds}."
            )


@dataclass(frozen=True)
class LightGBMConfig:
    """The trees of the churn and repurchase candidates (the uplift arms derive theirs from these)."""

    learning_rate: float = 0.1
    max_bin: int = 63
    num_leaves: int = 15
    min_child_samples: int = 200
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # default: the machine's cores
    max_trees: int = 1000
    early_stopping_rounds: int = 30

    def params(self) -> dict:
        """The parameters `lightgbm.train` takes (the tree budget and early stopping go separately)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del fields["max_trees"], fields["early_stopping_rounds"]
        return {"objective": "binary", "verbose": -1, **fields}


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"


@dataclass(frozen=True)
class ServingConfig:
    host: str = "127.0.0.1"
    port: int = 3000
    workers: int = 1
    allow_anonymous: bool = False
    snapshot_dir: str = "snapshots"
    gc_freeze: bool = True
    max_ids_per_request: int = 10000
    max_members_per_request: int = 1000
    path_prefix: str = ""  # mount the routes under this path (e.g. "/retain" behind a gateway); "" is the root


@dataclass(frozen=True)
class DecisionsConfig:
    churn_threshold: float = 0.3
    sleeping_threshold: float = 0.6
    lost_threshold: float = 0.85
    new_member_days: int = 30
    repurchase_threshold: float = 0.5
    value_horizon_days: int = 365
    margin_rate: float = 0.3
    holdout_share: float = 0.05
    language: str = "zh"
    high_value: float = 500.0
    low_value: float = 100.0
    frequency_cap: int = 2
    frequency_window_days: int = 30

    def __post_init__(self):
        if not self.churn_threshold <= self.sleeping_threshold <= self.lost_threshold:
            raise ConfigError(
                "Config keys decisions.churn_threshold <= sleeping_threshold <= lost_threshold must be in order, "
                f"got {self.churn_threshold}, {self.sleeping_threshold}, {self.lost_threshold}."
            )


@dataclass(frozen=True)
class WinbackConfig:
    send_cost: float = 0.5
    daily_budget: float = 20000.0
    cooldown_days: int = 30
    coupon_tiers: dict[str, float] = field(default_factory=lambda: {"满100减10": 10.0})
    min_churn_risk: float | None = None  # None: decisions.churn_threshold (win-back means at risk)
    redeem_rate: float = 0.9
    prior_uplift: float = 0.05
    response_days: int = 14
    history_days: int = 730
    min_treated: int = 1000
    min_control: int = 200
    holdout_days: int = 90
    # the T-learner's two arms: the [lightgbm] settings with these, and a fixed number of trees (each arm
    # has tens of thousands of rows at most and a weak signal)
    uplift_learning_rate: float = 0.05
    uplift_num_leaves: int = 7
    uplift_rounds: int = 150
    # The overlap rule: a learnt uplift only for members inside the range past campaigns' members had on
    # these features (between their overlap_quantile and 1 - overlap_quantile); the prior elsewhere.
    overlap_features: list[str] = field(
        default_factory=lambda: ["recency_days", "frequency", "tenure_days", "monetary_mean"]
    )
    overlap_quantile: float = 0.01

    def __post_init__(self):
        if not 0 <= self.overlap_quantile < 0.5:
            raise ConfigError(
                f"Config key winback.overlap_quantile must be at least 0 and below 0.5, got {self.overlap_quantile}."
            )


@dataclass(frozen=True)
class SubscriptionConfig:
    max_cycle_cv: float = 0.35
    uplift: float = 0.15
    send_cost: float = 0.5


@dataclass(frozen=True)
class EngineConfig:
    kind: str = "local"
    scheduler_address: str = ""
    workers: int = 2
    partitions: int = 8
    # TLS to a scheduler at tls://...: the CA that signed the cluster's certificates, and this client's own.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    allow_insecure: bool = False  # allow plain tcp:// to a scheduler that is not on this machine


@dataclass(frozen=True)
class ExportConfig:
    file_mode: str = "0640"  # member data: owner reads and writes, group reads; folders get 0750

    def __post_init__(self) -> None:
        files.parse_mode(self.file_mode, "export.file_mode")

    @property
    def mode(self) -> int:
        return files.parse_mode(self.file_mode, "export.file_mode")


@dataclass(frozen=True)
class MonitorConfig:
    """`retain monitor`: when past scores stop being true (realised accuracy) or today's members stop
    looking like the training ones (drift), an alert."""

    max_ece: float = 0.05  # realised calibration error above this: alert
    max_auc_drop: float = 0.03  # realised ROC-AUC this far below the figure the version was promoted with: alert
    max_psi: float = 0.25  # population stability index above this, for a score or a top feature: alert
    top_features: int = 10  # the inputs (by the model's importance) whose drift raises an alert
    psi_bins: int = 10  # quantile bins of the training reference (stored by make train)
    max_volume_ratio: float = 1.5  # a feed's rows a day this many times above or below before training: alert
    report_file: str = "exports/monitor.json"  # the latest figures, which the service's /metrics publishes

    def __post_init__(self) -> None:
        for name in ("max_ece", "max_auc_drop", "max_psi"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"monitor.{name} = {getattr(self, name)} must be in (0, 1].")
        if not self.max_volume_ratio > 1:
            raise ConfigError(
                f"monitor.max_volume_ratio = {self.max_volume_ratio} must be above 1 (1.5: alert at 1.5x or 1/1.5x)."
            )
        if self.top_features < 1 or self.psi_bins < 2:
            raise ConfigError("monitor.top_features must be at least 1 and monitor.psi_bins at least 2.")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    lightgbm: LightGBMConfig = field(default_factory=LightGBMConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    decisions: DecisionsConfig = field(default_factory=DecisionsConfig)
    winback: WinbackConfig = field(default_factory=WinbackConfig)
    subscription: SubscriptionConfig = field(default_factory=SubscriptionConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    @property
    def api_token(self) -> str | None:
        """The service's bearer token, from `RETAIN_API_TOKEN` only (never from the file)."""
        return os.environ.get("RETAIN_API_TOKEN") or None


def loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1 or localhost): reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any address
        return False


def load_config(path: Path | str | None = None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read `retain.toml` (or `path`, or `$RETAIN_CONFIG`) and apply `RETAIN_<SECTION>_<KEY>` overrides."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("RETAIN_CONFIG") or DEFAULT_CONFIG_PATH)
    raw: dict[str, dict] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}.") from None
    elif path != DEFAULT_CONFIG_PATH:
        raise ConfigError(f"Config file {path} does not exist.")
    for section, key, value in _env_overrides(environ):
        raw.setdefault(section, {})[key] = value
    return _build(Config, raw, where="")


def _env_overrides(environ: typing.Mapping[str, str]) -> typing.Iterator[tuple[str, str, object]]:
    sections = {f.name for f in dataclasses.fields(Config)}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NON_OVERRIDE_ENV:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in sections or not key:
            raise ConfigError(
                f"Environment variable {name} names no config section; use RETAIN_<SECTION>_<KEY> "
                f"with a section among {sorted(sections)}."
            )
        yield section, key, _parse_env_value(text)


def _parse_env_value(text: str) -> object:
    """An override is read as a TOML value when it is one (60, 0.5, true, ["a"]), else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, raw: object, where: str) -> object:
    if not isinstance(raw, dict):
        raise ConfigError(f"Config section [{where}] must be a table of keys.")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        name = f"{where}.{key}" if where else key
        if key in SECRET_KEYS:
            raise ConfigError(f"Config key {name} looks like a secret: secrets are read from the environment only.")
        if key not in known:
            raise ConfigError(f"Unknown config key {name}; known keys here are {sorted(known)}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        name = f"{where}.{key}" if where else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, name)
        else:
            values[key] = _check_type(name, value, hint)
    return cls(**values)


def _check_type(name: str, value: object, hint: object) -> object:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"Config key {name} must be {hint.__name__}, got {value!r}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"Config key {name} must be a list, got {value!r}.")
        (item,) = typing.get_args(hint)
        return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"Config key {name} must be a table, got {value!r}.")
        _, item = typing.get_args(hint)
        return {str(k): _check_type(f"{name}.{k}", v, item) for k, v in value.items()}
    if isinstance(hint, types.UnionType):  # an optional key (`float | None`): absent from the file is None
        (kind,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _check_type(name, value, kind)
    raise ConfigError(f"Config key {name} has an unsupported type {hint}.")  # pragma: no cover
