import pytest

from retain.config import ConfigError, load_config


def test_the_shipped_config_loads_with_its_defaults(config):
    assert config.labels.churn_horizon_days == 90
    assert config.labels.repurchase_horizon_days == 30
    assert config.ingest.max_bad_share == 0.01
    assert config.data.categories["母婴"] == "baby"
    assert config.engine.kind == "local"


def test_an_environment_variable_overrides_a_key():
    cfg = load_config(environ={"RETAIN_LABELS_CHURN_HORIZON_DAYS": "60"})
    assert cfg.labels.churn_horizon_days == 60


def test_retain_debug_and_the_other_non_config_variables_are_not_read_as_keys():
    cfg = load_config(environ={"RETAIN_DEBUG": "1", "RETAIN_CONFIG": "retain.toml", "RETAIN_API_TOKEN": "t"})
    assert cfg.labels.churn_horizon_days == 90
    with pytest.raises(ConfigError, match="RETAIN_DEBUGGING"):
        load_config(environ={"RETAIN_DEBUGGING": "1"})  # anything else is still a key, and unknown


def test_overrides_are_typed_from_their_text():
    cfg = load_config(
        environ={
            "RETAIN_SERVING_ALLOW_ANONYMOUS": "true",
            "RETAIN_DECISIONS_MARGIN_RATE": "0.25",
            "RETAIN_ENGINE_KIND": "dask",
        }
    )
    assert cfg.serving.allow_anonymous is True
    assert cfg.decisions.margin_rate == 0.25
    assert cfg.engine.kind == "dask"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"RETAIN_LABELS_CHURN_HORIZON": "60"}, "labels.churn_horizon"),
        ({"RETAIN_LABELS_CHURN_HORIZON_DAYS": "sixty"}, "labels.churn_horizon_days"),
        ({"RETAIN_NOSUCH_KEY": "1"}, "RETAIN_NOSUCH_KEY"),
        ({"RETAIN_SERVING_ALLOW_ANONYMOUS": "1"}, "serving.allow_anonymous"),
        ({"RETAIN_DECISIONS_CHURN_THRESHOLD": "0.7"}, "decisions.churn_threshold"),  # above sleeping_threshold
        ({"RETAIN_MONITOR_MAX_VOLUME_RATIO": "0.5"}, "monitor.max_volume_ratio"),  # a ratio below 1 never alerts
    ],
)
def test_a_wrong_key_or_type_is_an_error_naming_it(environ, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(environ=environ)


def test_a_wrong_key_in_the_file_is_named(tmp_path):
    path = tmp_path / "retain.toml"
    path.write_text("[labels]\nchurn_horizon_day = 60\n")
    with pytest.raises(ConfigError, match=r"labels\.churn_horizon_day"):
        load_config(path, environ={})


def test_secrets_are_refused_in_the_file_and_read_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "retain.toml"
    path.write_text('[serving]\napi_token = "hunter2"\n')
    with pytest.raises(ConfigError, match="environment only"):
        load_config(path, environ={})
    monkeypatch.setenv("RETAIN_API_TOKEN", "s3cret")
    assert load_config(environ={}).api_token == "s3cret"


def test_the_config_object_is_frozen(config):
    with pytest.raises(AttributeError):
        config.labels.churn_horizon_days = 1
