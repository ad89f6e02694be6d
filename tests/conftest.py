"""Shared helpers: tiny canonical datasets written from inline frames, and small simulated shops."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from retain.config import Config, load_config
from retain.dataset import Dataset, open_dataset, write_dataset

ROOT = Path(__file__).resolve().parents[1]
CDNOW = ROOT / "examples" / "cdnow"  # the public CDNOW log, shipped with the repository
CDNOW_MASTER = CDNOW / "CDNOW_master.txt"
CDNOW_SAMPLE = CDNOW / "CDNOW_sample.txt"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config(ROOT / "retain.toml", environ={})


def orders_frame(rows: list[tuple]) -> pd.DataFrame:
    """Orders from (member_id, ordered_at, amount[, category[, status[, refunded_at]]]) tuples."""
    records = []
    for i, row in enumerate(rows):
        member, at, amount, *rest = row
        category = rest[0] if len(rest) > 0 else "食品"
        status = rest[1] if len(rest) > 1 else "paid"
        refunded_at = pd.Timestamp(rest[2]) if len(rest) > 2 and rest[2] else pd.NaT
        records.append(
            {
                "order_id": f"o{i}",
                "member_id": member,
                "ordered_at": pd.Timestamp(at),
                "amount": float(amount),
                "category": category,
                "quantity": 1,
                "coupon_id": None,
                "status": status,
                "refunded_at": refunded_at,
            }
        )
    frame = pd.DataFrame(records)
    frame["quantity"] = frame["quantity"].astype("Int64")
    frame["coupon_id"] = frame["coupon_id"].astype("str").where(frame["coupon_id"].notna())
    for col in ("ordered_at", "refunded_at"):
        frame[col] = frame[col].astype("datetime64[us]")
    return frame


def make_dataset(tmp_path: Path, tables: dict[str, pd.DataFrame], observed_until: str, name: str = "ds") -> Dataset:
    write_dataset(tmp_path / name, tables, pd.Timestamp(observed_until), "CNY")
    return open_dataset(tmp_path / name)


@pytest.fixture(scope="session")
def small_shop(tmp_path_factory) -> Dataset:
    """A small simulated shop (3,000 members over 400 days, fixed seed) shared by model-level tests."""
    from retain.simulate import simulate_shop

    out = tmp_path_factory.mktemp("shop") / "small"
    simulate_shop(out, members=3000, days=400, seed=11)
    return open_dataset(out)


@pytest.fixture(scope="session")
def trained(small_shop, config, tmp_path_factory) -> tuple[dict[str, str], Config]:
    """The training job run on the small shop into a throwaway store: the environment that points a
    service at it, and the same settings as a Config."""
    import dataclasses

    from training.job import train

    tmp = tmp_path_factory.mktemp("store")
    env = {
        "RETAIN_MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        "RETAIN_MLFLOW_ARTIFACT_LOCATION": str(tmp / "artifacts"),
        "RETAIN_SERVING_SNAPSHOT_DIR": str(tmp / "snapshots"),
        "RETAIN_TRAINING_MAX_ECE": "0.1",  # 3,000 members make ECE noisy; the gate is tested elsewhere
    }
    job = dataclasses.replace(
        config,
        mlflow=dataclasses.replace(
            config.mlflow,
            tracking_uri=env["RETAIN_MLFLOW_TRACKING_URI"],
            artifact_location=env["RETAIN_MLFLOW_ARTIFACT_LOCATION"],
        ),
        serving=dataclasses.replace(config.serving, snapshot_dir=env["RETAIN_SERVING_SNAPSHOT_DIR"]),
        training=dataclasses.replace(config.training, max_ece=0.1),
    )
    train(small_shop, job)
    return env, job


# What makes a test slow: a trained model store, a real server, a Dask cluster, a 50,000-member shop. `make
# test` runs everything; `make test-fast` (-m "not slow") the rest, for the loop while writing code.
SLOW_FIXTURES = {
    "trained",
    "store",
    "client",
    "server",
    "prefixed_client",
    "setup",
    "exported",
    "dask_engine",
    "demo_shop",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
