"""The scoring service: every endpoint through BentoML's ASGI app, then a real `retain serve` process
(with schemathesis against its OpenAPI document). The models come from the training job run on a small
simulated shop into a throwaway MLflow store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from retain.errors import RetainError

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VERSIONS = {"retain-churn": "1", "retain-repurchase": "1", "retain-uplift": "1", "retain-value": "1"}


@pytest.fixture(scope="module")
def store(trained):
    """The environment that points the service at the trained store (see conftest.trained)."""
    return trained[0]


@pytest.fixture(scope="module")
def client(store):
    from starlette.testclient import TestClient

    saved = dict(os.environ)
    os.environ.update({**store, "RETAIN_API_TOKEN": TOKEN})
    try:
        from serving.service import RetainService

        with TestClient(RetainService.to_asgi()) as test_client:
            yield test_client
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def members(store):
    frame = pd.read_parquet(Path(store["RETAIN_SERVING_SNAPSHOT_DIR"]) / "2025-02-04.parquet")
    return frame


def test_score_returns_the_snapshot_scores_and_lists_unknown_ids(client, members):
    ids = list(members.index[:3])
    response = client.post("/score", json={"member_ids": [*ids, "no-such-member"]}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["as_of"] == "2025-02-04" and body["model_versions"] == VERSIONS
    assert [s["member_id"] for s in body["scores"]] == ids and body["unknown"] == ["no-such-member"]
    first = body["scores"][0]
    assert first["churn_risk"] == pytest.approx(members.loc[ids[0], "churn_risk"], abs=1e-6)
    assert first["action"] in {"winback_coupon", "subscription_offer", "none"}
    assert len(first["reasons"]) == 3 and first["reasons"][0]["direction"] in {"raises", "lowers"}
    assert set(first) == {
        "member_id",
        "churn_risk",
        "repurchase_prob",
        "segment",
        "action",
        "offer_detail",
        "expected_value",
        "reasons",
    }


def test_the_training_snapshot_explains_the_members_a_decision_reaches_and_the_service_the_rest(client, members):
    """The training job precomputes reasons only where the action is not `none`; a member without them
    still gets three reasons, computed on the request, the same as the snapshot's rows are made."""
    acting = members["action"] != "none"
    assert acting.any() and (~acting).any()
    assert members.loc[acting, "reason_1_feature"].notna().all() and members.loc[~acting, "reason_1"].isna().all()
    quiet = members.index[~acting.to_numpy()][0]
    body = client.post("/score", json={"member_ids": [quiet]}, headers=AUTH).json()
    (score,) = body["scores"]
    assert score["action"] == "none" and len(score["reasons"]) == 3 and score["reasons"][0]["label"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
@pytest.mark.parametrize(
    ("method", "path"), [("post", "/score"), ("post", "/score_features"), ("get", "/model"), ("post", "/reload")]
)
def test_protected_endpoints_need_the_bearer_token(client, headers, method, path):
    response = getattr(client, method)(path, headers=headers)
    assert response.status_code == 401 and response.json()["field"] == "Authorization"


def test_health_endpoints_stay_open_and_ready(client):
    for path in ("/healthz", "/livez", "/readyz"):
        assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"member_ids": []}', 422, "member_ids"),
        (json.dumps({"member_ids": [f"m{i}" for i in range(10_001)]}).encode(), 422, "member_ids"),
        (b'{"member_ids": ["a", "a"]}', 422, "member_ids"),
        (b'{"member_ids": ["a", 7]}', 422, "member_ids[1]"),
        (b'{"member_ids": [NaN]}', 400, "body"),
        (b'{"member_ids": ["a"], "x": Infinity}', 400, "body"),
        (b"member_ids=a", 400, "body"),
        (b'["a"]', 422, "body"),
        (b'{"member_ids": ["a"], "extra": 1}', 422, "extra"),
        (b'{"member_ids": "' + b"a" * (5 * 1024 * 1024) + b'"}', 413, "body"),
    ],
)
def test_bad_score_requests_get_a_4xx_naming_the_field(client, body, status, field):
    response = client.post("/score", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["field"] == field and response.json()["error"]


def test_score_features_scores_fresh_features_as_the_snapshot_does(client, members, trained):
    """A CRM tool that sends a member's features gets the churn risk and reasons the snapshot holds for the
    same member (one Scorer); a member sent with no features is scored too, as one the model knows nothing of."""
    from retain.registry import Registry
    from retain.scoring import Scorer
    from retain.serving_state import DERIVED_PREFIXES

    scorer = Scorer.from_registry(Registry(trained[1].mlflow), trained[1])
    names = [name for name in scorer.churn.feature_names if not name.startswith(DERIVED_PREFIXES)]
    row = members[members["reason_1_feature"].notna()].iloc[0]  # one whose reasons the snapshot holds
    features = {name: (None if pd.isna(row[name]) else float(row[name])) for name in names}
    response = client.post(
        "/score_features", json={"members": [{"member_id": "fresh-1", **features}, {"member_id": "bare"}]}, headers=AUTH
    )
    assert response.status_code == 200
    fresh, bare = response.json()["scores"]
    assert (fresh["member_id"], bare["member_id"]) == ("fresh-1", "bare")
    assert fresh["churn_risk"] == pytest.approx(row["churn_risk"], abs=1e-6)
    assert [reason["feature"] for reason in fresh["reasons"]] == [row[f"reason_{k}_feature"] for k in (1, 2, 3)]
    nothing = pd.DataFrame(np.nan, index=pd.Index(["bare"], name="member_id"), columns=names)
    expected = scorer.score(nothing, pd.Timestamp(response.json()["as_of"]))
    assert bare["churn_risk"] == pytest.approx(expected["churn_risk"].iloc[0], abs=1e-6)
    assert len(bare["reasons"]) == 3


@pytest.mark.parametrize(
    ("member", "field"),
    [
        ({"member_id": "a", "not_a_feature": 1}, "members[0].not_a_feature"),
        ({"member_id": "a", "recency_days": "ten"}, "members[0].recency_days"),
        ({"member_id": "a", "recency_days": -3}, "members[0].recency_days"),
        ({"member_id": "a", "frequency": True}, "members[0].frequency"),
        ({"recency_days": 1}, "members[0].member_id"),
    ],
)
def test_bad_feature_requests_are_rejected_naming_the_field(client, member, field):
    response = client.post("/score_features", json={"members": [member]}, headers=AUTH)
    assert response.status_code == 422 and response.json()["field"] == field


def test_score_features_limits_the_batch(client):
    too_many = [{"member_id": f"m{i}"} for i in range(1001)]
    response = client.post("/score_features", json={"members": too_many}, headers=AUTH)
    assert response.status_code == 422 and response.json()["field"] == "members"


def test_model_reports_versions_metrics_and_snapshot(client, small_shop):
    body = client.get("/model", headers=AUTH).json()
    assert body["snapshot_as_of"] == "2025-02-04"
    churn = body["models"]["retain-churn"]
    assert churn["version"] == "1" and churn["alias"] == "champion"
    assert {"roc_auc", "pr_auc", "ece"} <= set(churn["metrics"])
    assert churn["dataset_fingerprint"] == small_shop.fingerprint
    assert [w["worker_pid"] for w in body["workers"]] == [body["worker_pid"]]  # one worker here


def test_reload_bumps_the_generation_and_serves_the_new_snapshot(client, store, members):
    before = client.get("/model", headers=AUTH).json()["generation"]
    folder = Path(store["RETAIN_SERVING_SNAPSHOT_DIR"])
    from retain import snapshot

    changed = members.copy()
    changed["churn_risk"] = 0.123456
    snapshot.write(changed, pd.Timestamp("2025-02-04"), VERSIONS, "x", folder)
    reloaded = client.post("/reload", headers=AUTH).json()
    assert reloaded["generation"] == before + 1
    response = client.post("/score", json={"member_ids": [members.index[0]]}, headers=AUTH).json()
    assert response["scores"][0]["churn_risk"] == 0.123456
    snapshot.write(members, pd.Timestamp("2025-02-04"), VERSIONS, "x", folder)
    client.post("/reload", headers=AUTH)


# --- a real `retain serve` process ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(store: dict, extra_env: dict | None = None):
    """A real `retain serve` process on 127.0.0.1 until the block ends; stopped by its process id."""
    port = free_port()
    env = {**os.environ, **store, "RETAIN_API_TOKEN": TOKEN, "BENTOML_DO_NOT_TRACK": "true", **(extra_env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "retain.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    ready = f"{url}/readyz"  # BentoML's own routes stay at the root whatever the prefix
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                pytest.fail(f"retain serve exited: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        else:
            pytest.fail("retain serve was not ready within 120 s")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # stop what we started, by its process id
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


MONITOR_REPORT = {  # what `retain monitor` writes: the service publishes it on /metrics
    "days": [
        {"day": "2024-10-01", "task": "churn", "status": "realised", "roc_auc": 0.91, "pr_auc": 0.8, "ece": 0.02},
        {"day": "2025-01-20", "task": "churn", "status": "estimated", "expected_roc_auc": 0.93},
    ],
    "drift": [{"task": "churn", "psi": [{"feature": "score", "psi": 0.31, "top": True}]}],
    "alerts": ["churn model v1: members have shifted since training ..."],
}


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    report = tmp_path_factory.mktemp("monitor") / "monitor.json"
    report.write_text(json.dumps(MONITOR_REPORT), encoding="utf-8")
    with running_server(store, {"RETAIN_MONITOR_REPORT_FILE": str(report)}) as url:
        yield url


def test_a_real_server_scores_over_http(server, members):
    response = httpx.post(f"{server}/score", json={"member_ids": [members.index[0]]}, headers=AUTH, timeout=10)
    assert response.status_code == 200 and response.json()["scores"][0]["member_id"] == members.index[0]
    metrics = httpx.get(f"{server}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert 'retain_monitor_psi{input="score",task="churn"} 0.31' in metrics.text
    assert 'retain_monitor_realised{metric="ece",task="churn"} 0.02' in metrics.text
    assert 'retain_monitor_estimated_roc_auc{task="churn"} 0.93' in metrics.text
    assert "retain_monitor_alerts 1.0" in metrics.text
    assert httpx.post(f"{server}/score", json={"member_ids": ["x"]}, timeout=10).status_code == 401


def test_schemathesis_finds_no_server_error(server):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    failures, calls = [], []
    for operation in schema.get_all_operations():
        strategy = operation.ok().as_strategy()

        @settings(max_examples=60, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case):
            response = case.call(base_url=server, headers=AUTH, timeout=30)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.operation.label, response.status_code, response.text[:200]))

        check()
    assert len(calls) >= 100  # a bounded run of a few hundred generated requests
    assert not failures, failures[:5]


def test_the_service_refuses_to_start_without_a_token(store):
    env = {k: v for k, v in os.environ.items() if k != "RETAIN_API_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "retain.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**env, **store},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "RETAIN_API_TOKEN is not set" in result.stderr


# --- the service fails closed and answers the caller's mistakes with a 4xx -------------------------

HOSTILE = [  # (body, status, field): each a 4xx naming the field, never a 503
    (b'{"member_ids": [' + b"1" * 5000 + b"]}", 422, "member_ids[0]"),  # an integer past Python's 4,300 digits
    (b'{"member_ids": ["' + b"x" * 300 + b'"]}', 422, "member_ids[0]"),
    (b'{"member_ids": ["\\ud800"]}', 422, "member_ids[0]"),  # a lone UTF-16 surrogate
    (b"[" * 100_000 + b"]" * 100_000, 400, "body"),  # nested 100,000 deep
    (b'{"member_ids": ["a"], "member_ids": ["b"]}', 400, "member_ids"),  # a key given twice
    (b'{"member_ids": ["\xff\xfe"]}', 400, "body"),  # not UTF-8
    (b'{"member_ids": [' + b",".join([b"1"] * 1_000_000) + b"]}", 422, "member_ids"),  # a huge array of tiny items
    (b'{"\\udc00": 1}', 422, "\\udc00"),  # an unknown key that is not valid Unicode, echoed safely
]
HOSTILE_FEATURES = [
    ({"members": [{"member_id": "a", "recency_days": 1e400}]}, 422, "members[0].recency_days"),
    ({"members": [{"member_id": "a", "recency_days": int("9" * 400)}]}, 422, "members[0].recency_days"),
    ({"members": [{"member_id": "a"}], "as_of": "NaT"}, 422, "as_of"),
    ({"members": [{"member_id": "a"}], "as_of": 20250101}, 422, "as_of"),
    ({"members": [{"member_id": "a"}], "as_of": "2025-02-30"}, 422, "as_of"),
]


def features_body(payload: dict) -> bytes:
    return json.dumps(payload).replace("Infinity", "1e400").encode()  # 1e400 is valid JSON, beyond a double


@pytest.mark.parametrize(("body", "status", "field"), HOSTILE)
def test_hostile_bodies_get_a_4xx_naming_the_field(client, body, status, field):
    response = client.post("/score", content=body, headers={**AUTH, "content-type": "application/json"})
    assert (response.status_code, response.json()["field"]) == (status, field), response.text[:200]


@pytest.mark.parametrize(("payload", "status", "field"), HOSTILE_FEATURES)
def test_hostile_feature_values_get_a_4xx_naming_the_field(client, payload, status, field):
    response = client.post("/score_features", content=features_body(payload), headers=AUTH)
    assert (response.status_code, response.json()["field"]) == (status, field), response.text[:200]


def chunks(total: int, size: int = 64 * 1024):
    yield b'{"member_ids": ["'
    for _ in range(total // size):
        yield b"a" * size


def test_a_chunked_body_over_the_limit_is_refused_without_being_read_whole(client):
    response = client.post("/score", content=chunks(6 * 1024 * 1024), headers=AUTH)
    assert response.status_code == 413 and response.json()["field"] == "body"


def test_ten_thousand_distinct_ids_are_accepted_and_a_repeat_is_named():
    from retain import api

    ids = [f"m{i}" for i in range(10_000)]
    assert api.parse_score_request({"member_ids": ids}, 10_000) == ids
    with pytest.raises(api.RequestError, match="repeats 'm5'"):
        api.parse_score_request({"member_ids": [*ids[:9_000], "m5"]}, 10_000)


@pytest.fixture(scope="module")
def prefixed_client(client):
    """The same service behind a path prefix the way a proxy or Starlette's Mount presents it: the full
    path in `path`, the prefix in `root_path`. (Not a context manager: the service is already started.)"""
    from starlette.testclient import TestClient

    async def under_prefix(scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, "root_path": "/retain"}
        await client.app(scope, receive, send)

    return TestClient(under_prefix)


@pytest.mark.parametrize(("method", "path"), [("post", "/score"), ("get", "/model"), ("post", "/reload")])
def test_the_token_is_checked_under_a_path_prefix(prefixed_client, method, path):
    assert getattr(prefixed_client, method)(f"/retain{path}").status_code == 401
    authorized = getattr(prefixed_client, method)(f"/retain{path}", headers=AUTH)
    assert authorized.status_code in (200, 400)  # routed, past the token (an empty /score body is a 400)


class StubState:
    """A worker state whose /score needs reasons computed: records where the work ran."""

    generation = 0

    def __init__(self):
        self.on_loop = None

    def needs_explaining(self, ids):
        return True

    def score_response(self, ids):
        import asyncio

        try:
            asyncio.get_running_loop()
            self.on_loop = True
        except RuntimeError:
            self.on_loop = False
        return "{}"


def stub_service(state, stale=False):
    from types import SimpleNamespace

    config = SimpleNamespace(serving=SimpleNamespace(max_ids_per_request=10, max_members_per_request=10))
    return SimpleNamespace(token=TOKEN, state=state, config=config, is_stale=lambda: stale)


def test_reasons_computed_on_request_run_off_the_event_loop():
    from starlette.testclient import TestClient

    from serving.app import build_app

    state = StubState()
    with TestClient(build_app(stub_service(state))) as test_client:
        assert test_client.post("/score", json={"member_ids": ["a"]}, headers=AUTH).status_code == 200
    assert state.on_loop is False


def test_a_failure_of_the_service_is_a_500_with_an_error_id_its_log_carries(caplog):
    """A bug is the service's fault, not the caller's: 500 (a 503 would be retried) with an id to find it."""
    from starlette.testclient import TestClient

    from serving.app import build_app

    class Broken(StubState):
        def score_response(self, ids):
            raise KeyError("a bug")

    with TestClient(build_app(stub_service(Broken()))) as test_client:
        response = test_client.post("/score", json={"member_ids": ["a"]}, headers=AUTH)
    assert response.status_code == 500
    error_id = response.json()["error_id"]
    assert len(error_id) == 12 and error_id in response.json()["error"]
    assert "KeyError" not in response.text  # no internals for the caller
    assert any(error_id in record.getMessage() for record in caplog.records)


def test_a_failed_reload_keeps_serving_and_backs_off(monkeypatch, tmp_path):
    import threading

    from serving import service as module

    worker = module.RetainService.inner.__new__(module.RetainService.inner)
    worker.state, worker._lock = StubState(), threading.Lock()
    worker._retry_at, worker._failures, worker._marker = 0.0, 0, 1
    worker.generation = SimpleGeneration(tmp_path)
    worker.config = worker.registry = None
    attempts = []

    def broken(*args):
        attempts.append(1)
        raise FileNotFoundError("snapshot gone")

    monkeypatch.setattr(module.ServingState, "load", broken)
    assert worker.is_stale()
    served = worker.state
    for _ in range(5):  # the first request tries once; the next ones, inside the back-off, do not
        assert (worker.refresh() if worker.is_stale() else worker.state) is served
    assert len(attempts) == 1 and worker._retry_at > 0


class SimpleGeneration:
    def __init__(self, folder):
        self.path = folder / "GENERATION"
        self.path.write_text("2\n")

    def read(self):
        return 2


def test_anonymous_mode_refuses_a_public_address(store, monkeypatch):
    from serving.service import RetainService

    for name, value in {**store, "RETAIN_SERVING_ALLOW_ANONYMOUS": "true", "RETAIN_SERVING_HOST": "0.0.0.0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RETAIN_API_TOKEN", raising=False)
    with pytest.raises(RetainError, match="binding 0.0.0.0 needs RETAIN_API_TOKEN"):
        RetainService.inner()
    monkeypatch.setenv("RETAIN_SERVING_HOST", "127.0.0.1")
    assert RetainService.inner().token is None  # anonymous on loopback still starts


# --- the same, against a real `retain serve` process ---------------------------------------------------


def test_a_real_server_answers_hostile_bodies_with_a_4xx_naming_the_field(server):
    answers = []
    for body, status, field in HOSTILE:
        response = httpx.post(f"{server}/score", content=body, headers=AUTH, timeout=30)
        answers.append((response.status_code, response.json()["field"]) == (status, field))
    for payload, status, field in HOSTILE_FEATURES:
        response = httpx.post(f"{server}/score_features", content=features_body(payload), headers=AUTH, timeout=30)
        answers.append((response.status_code, response.json()["field"]) == (status, field))
    chunked = httpx.post(f"{server}/score", content=chunks(6 * 1024 * 1024), headers=AUTH, timeout=30)
    answers.append(chunked.status_code == 413)
    assert all(answers), answers


def test_a_real_server_scores_ten_thousand_ids_in_one_request(server, members):
    ids = [*members.index[:100], *(f"absent-{i}" for i in range(9_900))]
    response = httpx.post(f"{server}/score", json={"member_ids": ids}, headers=AUTH, timeout=30)
    assert response.status_code == 200 and len(response.json()["scores"]) == 100
    assert len(response.json()["unknown"]) == 9_900


def test_a_real_server_keeps_serving_when_another_worker_s_reload_cannot_load(server, store, members):
    from retain.serving_state import Generation

    folder = Path(store["RETAIN_SERVING_SNAPSHOT_DIR"])
    pointer, saved = folder / "CURRENT", (folder / "CURRENT").read_text(encoding="utf-8")
    body = {"member_ids": [members.index[0]]}
    before = httpx.post(f"{server}/score", json=body, headers=AUTH, timeout=10).json()
    try:
        pointer.write_text("missing.parquet\n", encoding="utf-8")  # what another worker published is broken
        Generation(folder).bump()
        for _ in range(5):
            response = httpx.post(f"{server}/score", json=body, headers=AUTH, timeout=10)
            assert response.status_code == 200 and response.json() == before
    finally:
        pointer.write_text(saved, encoding="utf-8")
        Generation(folder).bump()


def test_a_real_server_under_a_path_prefix_checks_the_token(store, members):
    body = {"member_ids": [members.index[0]]}
    with running_server(store, {"RETAIN_SERVING_PATH_PREFIX": "/retain"}) as url:
        assert httpx.post(f"{url}/retain/score", json=body, timeout=10).status_code == 401
        assert httpx.get(f"{url}/retain/model", timeout=10).status_code == 401
        assert httpx.post(f"{url}/retain/score", json=body, headers=AUTH, timeout=10).status_code == 200


def test_retain_serve_refuses_anonymous_mode_on_a_public_address(store):
    env = {k: v for k, v in os.environ.items() if k != "RETAIN_API_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "retain.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=ROOT,
        env={**env, **store, "RETAIN_SERVING_ALLOW_ANONYMOUS": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Refusing to serve 0.0.0.0 without a token" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_openapi_document_states_the_configured_request_limits():
    from retain.config import ServingConfig
    from serving.openapi import document

    doc = document(ServingConfig(max_ids_per_request=5, max_members_per_request=2))
    score = doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    features = doc["paths"]["/score_features"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert score["properties"]["member_ids"]["maxItems"] == 5
    assert features["properties"]["members"]["maxItems"] == 2
