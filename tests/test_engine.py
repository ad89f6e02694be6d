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
    with open_engine(dask_config(config), scoring=True) as engine:  # as `retain export` opens it
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


def test_the_dask_engine_maps_member_buckets_and_never_shuffles(small_shop, config, dask_engine):
    """Each task reads its own group of member buckets: the cluster runs no shuffle, no repartition, and one
    task per group, each reading files, not receiving frames."""
    from distributed import get_task_stream

    as_of = pd.Timestamp("2024-11-01")
    with get_task_stream(dask_engine.client) as stream:
        distributed = dask_engine.features(small_shop, as_of)
    # (the workers' import of the scoring modules, sent when the engine opened, is not the features' graph)
    keys = [str(task["key"]) for task in stream.data if not str(task["key"]).startswith("import_scoring")]
    assert keys and not any(word in key for key in keys for word in ("shuffle", "repartition", "split", "p2p"))
    assert len(keys) == dask_engine.partitions and all(key.startswith("bucket_features") for key in keys)
    local = LocalEngine(config).features(small_shop, as_of)
    pd.testing.assert_frame_equal(distributed, local, rtol=1e-9)


def test_a_table_absent_from_some_buckets_is_empty_there_not_missing(small_shop, config, dask_engine, tmp_path):
    """A small table (one suppression, one subscription) has files in one bucket only: the other tasks see it
    empty, as the local engine does for members without rows (counts 0, not missing), and nothing fails."""
    from conftest import make_dataset

    tables = {t: small_shop.read(t) for t in ("orders", "events", "members", "subscriptions", "suppressions")}
    tables["subscriptions"] = tables["subscriptions"].head(1)
    tables["suppressions"] = tables["suppressions"].head(1)
    sparse = make_dataset(tmp_path, tables, str(small_shop.observed_until), "sparse")
    assert len(sparse.files("suppressions")) == 1 < dask_engine.partitions
    as_of = pd.Timestamp("2024-11-01")
    pd.testing.assert_frame_equal(dask_engine.features(sparse, as_of), LocalEngine(config).features(sparse, as_of))


def test_a_dataset_written_before_buckets_is_one_sentence_for_dask(small_shop, dask_engine, tmp_path):
    import json

    old = tmp_path / "old"
    old.mkdir()
    small_shop.read("orders").to_parquet(old / "orders.parquet", index=False)
    (old / "dataset.json").write_text(json.dumps({k: v for k, v in small_shop.metadata.items() if k != "buckets"}))
    from retain.dataset import open_dataset

    with pytest.raises(RetainError, match=r"written before member buckets.*retain rebucket --data"):
        dask_engine.features(open_dataset(old), pd.Timestamp("2024-11-01"))


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
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [export.LOCK_FILE]  # no temp folder
    finally:
        engine.close()


@pytest.mark.slow
def test_an_unknown_engine_or_an_unreachable_scheduler_is_one_sentence(config):
    wrong = dataclasses.replace(config, engine=dataclasses.replace(config.engine, kind="spark"))
    with pytest.raises(RetainError, match='"local" or "dask"'), open_engine(wrong):
        pass
    unreachable = dask_config(config, scheduler_address="tcp://127.0.0.1:9")
    with pytest.raises(RetainError, match="Could not reach the Dask scheduler"), open_engine(unreachable):
        pass


def write_tls_files(folder) -> dict[str, str]:
    """A throwaway CA and one certificate it signed for 127.0.0.1 (scheduler, worker and client alike)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, public_key, signing_key, ca: bool):
        builder = x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
        builder = builder.serial_number(x509.random_serial_number())
        builder = builder.not_valid_before(now - datetime.timedelta(days=1))
        builder = builder.not_valid_after(now + datetime.timedelta(days=1))
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        if not ca:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "retain test CA")])
    ca = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    leaf = certificate(name, ca_name, key.public_key(), ca_key, ca=False)
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {name: str(path) for name, path in paths.items()}


@pytest.mark.slow
def test_the_engine_reaches_a_tls_scheduler_with_the_configured_files(small_shop, config, tmp_path):
    from distributed import LocalCluster, Security

    tls = write_tls_files(tmp_path)
    cluster_security = Security(
        tls_ca_file=tls["ca"],
        tls_scheduler_cert=tls["cert"],
        tls_scheduler_key=tls["key"],
        tls_worker_cert=tls["cert"],
        tls_worker_key=tls["key"],
        tls_client_cert=tls["cert"],
        tls_client_key=tls["key"],
        require_encryption=True,
    )
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        protocol="tls",
        host="127.0.0.1",
        security=cluster_security,
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        settings = dask_config(
            config,
            scheduler_address=cluster.scheduler_address,
            tls_ca_file=tls["ca"],
            tls_cert_file=tls["cert"],
            tls_key_file=tls["key"],
            partitions=2,
        )
        with open_engine(settings) as engine:
            distributed = engine.features(small_shop, DAY)
        without_files = dask_config(config, scheduler_address=cluster.scheduler_address)
        with pytest.raises(RetainError, match="needs engine.tls_ca_file, engine.tls_cert_file, engine.tls_key_file"):
            open_engine(without_files).__enter__()
    pd.testing.assert_frame_equal(distributed, LocalEngine(config).features(small_shop, DAY), check_exact=False)


def test_plain_tcp_to_another_machine_is_refused_before_connecting(config):
    with pytest.raises(RetainError, match="Refusing plain tcp://10.0.0.5:8786"):
        DaskEngine(dask_config(config, scheduler_address="tcp://10.0.0.5:8786"))
