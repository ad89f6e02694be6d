"""The scoring service: every endpoint through BentoML's ASGI app, then a real `retain serve` process
(with schemathesis against its OpenAPI document). The models come from the training job run on a small
simulated shop into a throwaway MLflow store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import ROOT

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


def test_score_features_scores_fresh_features_with_reasons(client, members):
    row = members.iloc[0]
    features = {
        name: (None if pd.isna(row[name]) else float(row[name]))
        for name in (
            "recency_days",
            "frequency",
            "order_count",
            "monetary_mean",
            "monetary_total",
            "tenure_days",
            "first_purchase_days_ago",
            "last_purchase_days_ago",
            "views_30d",
        )
    }
    response = client.post(
        "/score_features", json={"members": [{"member_id": "fresh-1", **features}, {"member_id": "bare"}]}, headers=AUTH
    )
    assert response.status_code == 200
    scores = response.json()["scores"]
    assert [s["member_id"] for s in scores] == ["fresh-1", "bare"]
    assert all(0 <= s["churn_risk"] <= 1 and len(s["reasons"]) == 3 for s in scores)


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


@pytest.fixture(scope="module")
def server(store):
    port = free_port()
    env = {**os.environ, **store, "RETAIN_API_TOKEN": TOKEN, "BENTOML_DO_NOT_TRACK": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "retain.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
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


def test_a_real_server_scores_over_http(server, members):
    response = httpx.post(f"{server}/score", json={"member_ids": [members.index[0]]}, headers=AUTH, timeout=10)
    assert response.status_code == 200 and response.json()["scores"][0]["member_id"] == members.index[0]
    assert httpx.get(f"{server}/metrics", timeout=10).status_code == 200
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
