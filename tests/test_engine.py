"""The Dask engine on a real LocalCluster: the same features as the local engine on the demo shop, the
same export, and a worker killed in the middle of an export."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pandas as pd
import pytest

from retain import export
from retain.engine import DaskEngine, LocalEngine, open_engine
from retain.errors import RetainError
from retain.registry import Registry

DAY = pd.Timestamp("2025-01-20")


def dask_config(config, **engine):
    return dataclasses.replace(config, engine=dataclasses.replace(config.engine, kind="dask", **engine))


@pytest.fixture(scope="module")
def demo_shop(tmp_path_factory):
    """The demo shop as `make demo` simulates it (50,000 members, 730 days, seed 42)."""
    from retain.dataset import open_dataset
    from retain.simulate import simulate_shop

    out = tmp_path_factory.mktemp("demo") / "demo"
    simulate_shop(out, members=50_000, days=730, seed=42)
    return open_dataset(out)


@pytest.fixture(scope="module")
def dask_engine(config):
    with open_engine(dask_config(config)) as engine:
        yield engine


def test_dask_features_equal_the_local_ones_on_the_demo_shop(demo_shop, config, dask_engine):
    as_of = pd.Timestamp("2025-06-01")
    local = LocalEngine(config).features(demo_shop, as_of)
    distributed = dask_engine.features(demo_shop, as_of)
    assert len(local) > 30_000 and list(distributed.columns) == list(local.columns)
    assert distributed.index.equals(local.index)  # every member once: none split across partitions
    for column in local.columns:
        left, right = local[column], distributed[column]
        assert left.dtype == right.dtype, column
        if pd.api.types.is_float_dtype(left):
            pd.testing.assert_series_equal(left, right, check_exact=False, rtol=1e-9, atol=0)
        else:
            pd.testing.assert_series_equal(left, right, check_exact=True)


def test_the_dask_export_writes_the_same_files_as_the_local_one(trained, small_shop, dask_engine, tmp_path):
    _, config = trained
    config = dataclasses.replace(config, serving=dataclasses.replace(config.serving, snapshot_dir=str(tmp_path)))
    local = export.run(small_shop, config, Registry(config.mlflow), DAY, tmp_path / "local")
    distributed = export.run(small_shop, config, Registry(config.mlflow), DAY, tmp_path / "dask", engine=dask_engine)
    for name in ("at_risk.parquet", "at_risk.csv", "controls.parquet", "scores.parquet", "summary.json"):
        assert (distributed.folder / name).read_bytes() == (local.folder / name).read_bytes(), name


def test_a_worker_killed_during_the_export_leaves_no_partial_list(trained, small_shop, config, tmp_path):
    """Kill a worker process while the export's tasks run: Dask recomputes its work on the other worker
    (the nanny restarts the dead one) and the list is the local engine's, or the run fails with one
    sentence; either way there is never a partial or duplicated folder."""
    _, job = trained
    job = dataclasses.replace(job, serving=dataclasses.replace(job.serving, snapshot_dir=str(tmp_path / "snap")))
    reference = export.run(small_shop, job, Registry(job.mlflow), DAY, tmp_path / "local")
    engine = DaskEngine(dask_config(job, partitions=16))
    try:
        pids = engine.client.run(os.getpid)
        killed = threading.Event()

        def kill_when_busy():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed.is_set():
                if any(engine.client.processing().values()):
                    os.kill(next(iter(pids.values())), signal.SIGKILL)
                    killed.set()
                time.sleep(0.01)

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        out = tmp_path / "dask"
        try:
            result = export.run(small_shop, job, Registry(job.mlflow), DAY, out, engine=engine)
        except RetainError as failure:
            assert "Dask" in str(failure) and not (out / "2025-01-20").exists()
        else:
            assert result.status == "written"
            manifest = (result.folder / export.MANIFEST).read_bytes()
            assert manifest == (reference.folder / export.MANIFEST).read_bytes()
        killer.join()
        assert killed.is_set()  # the fault did happen
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    finally:
        engine.close()


def test_an_unknown_engine_or_an_unreachable_scheduler_is_one_sentence(config):
    wrong = dataclasses.replace(config, engine=dataclasses.replace(config.engine, kind="spark"))
    with pytest.raises(RetainError, match='"local" or "dask"'), open_engine(wrong):
        pass
    unreachable = dask_config(config, scheduler_address="tcp://127.0.0.1:9")
    with pytest.raises(RetainError, match="Could not reach the Dask scheduler"), open_engine(unreachable):
        pass
