"""Live checks of the compose deployment, from the host, against the containers that docker/e2e.sh started.

The script sets the environment: ``API_URL``, ``E2E_API_KEY``, ``PROMETHEUS_URL``, ``E2E_TRAINED_MODEL``,
``E2E_BUNDLED_MODELS`` (comma-separated), ``E2E_EXPECT_VERSION`` (reload step) and ``E2E_REPLICAS`` (scale
step). Without ``API_URL`` every test here is skipped: run ``docker/e2e.sh``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

API_URL = os.environ.get("API_URL", "")
PROMETHEUS_URL = os.environ.get("PROMETHEUS_URL", "")
API_KEY = os.environ.get("E2E_API_KEY", "")
DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dashboards" / "realnvp.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = [pytest.mark.docker, pytest.mark.skipif(not API_URL, reason="needs API_URL: run docker/e2e.sh")]


@pytest.fixture(scope="module")
def api() -> httpx.Client:
    headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
    with httpx.Client(base_url=API_URL, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def cards(api: httpx.Client) -> dict[str, dict[str, Any]]:
    response = api.get("/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["unavailable"] == {}, f"expected every model to load, got {body['unavailable']}"
    return {card["name"]: card for card in body["models"]}


def prometheus_query(expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{PROMETHEUS_URL}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, f"{expr}: {response.text}"
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def wait_for_result(expr: str, accept: Any = bool, timeout_s: float = 90.0, what: str = "") -> list[dict[str, Any]]:
    """Query until ``accept(result)`` holds (Prometheus scrapes every 5 s); fail with the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = prometheus_query(expr)
        if accept(result) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert accept(result), f"{what or expr}: expected the check to pass within {timeout_s:.0f} s, got {result}"
    return result


def sample(api: httpx.Client, model: str, n: int, seed: int, fmt: str = "array") -> dict[str, Any]:
    response = api.post("/sample", json={"model": model, "n": n, "seed": seed, "temperature": 0.8, "format": fmt})
    assert response.status_code == 200, response.text
    return response.json()


def nested_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0]
    return shape


# --- health, models, auth --------------------------------------------------------------------------------------


def test_health_and_readiness(api: httpx.Client) -> None:
    assert httpx.get(f"{API_URL}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{API_URL}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready"
    assert body["failed"] == {}
    assert set(body["models"].values()) == {"ready"}


def test_models_include_bundled_and_trained(cards: dict[str, dict[str, Any]]) -> None:
    bundled = {name for name in os.environ.get("E2E_BUNDLED_MODELS", "").split(",") if name}
    trained = os.environ.get("E2E_TRAINED_MODEL")
    expected = bundled | ({trained} if trained else set())
    assert expected <= set(cards), f"expected models {sorted(expected)}, got {sorted(cards)}"


def test_api_key_is_enforced_on_model_endpoints(cards: dict[str, dict[str, Any]]) -> None:
    if not API_KEY:
        pytest.skip("the deployment runs without API_KEY")
    model = next(iter(cards))
    response = httpx.post(f"{API_URL}/sample", json={"model": model, "n": 1}, timeout=10)
    assert response.status_code == 401
    assert "Authorization" in response.json()["detail"]
    assert httpx.get(f"{API_URL}/metrics", timeout=10).status_code == 200


# --- sampling and scoring on every served model --------------------------------------------------------------


def test_sample_is_seeded_and_shaped(api: httpx.Client, cards: dict[str, dict[str, Any]]) -> None:
    for name, card in cards.items():
        first = sample(api, name, n=3, seed=7)
        assert first["shape"] == [3, *card["shape"]], name
        assert nested_shape(first["samples"]) == [3, *card["shape"]], name
        assert sample(api, name, n=3, seed=7)["samples"] == first["samples"], f"{name}: seed not reproducible"


def test_log_likelihood_of_samples(api: httpx.Client, cards: dict[str, dict[str, Any]]) -> None:
    for name, card in cards.items():
        items = sample(api, name, n=4, seed=1)["samples"]
        response = api.post("/log-likelihood", json={"model": name, "inputs": items})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["log_likelihood"]) == len(body["bits_per_dim"]) == 4
        for nats, bits in zip(body["log_likelihood"], body["bits_per_dim"], strict=True):
            assert math.isfinite(nats)
            assert bits == pytest.approx(-nats / (card["dimension"] * math.log(2)), rel=1e-4, abs=1e-6)


def test_png_round_trip_on_image_models(api: httpx.Client, cards: dict[str, dict[str, Any]]) -> None:
    images = [name for name, card in cards.items() if card["data_kind"] == "image"]
    if not images:
        pytest.skip("no image model served")
    for name in images:
        pngs = sample(api, name, n=2, seed=3, fmt="png")["images"]
        assert all(base64.b64decode(png).startswith(PNG_SIGNATURE) for png in pngs)
        by_png = api.post("/log-likelihood", json={"model": name, "images": pngs})
        by_array = api.post(
            "/log-likelihood", json={"model": name, "inputs": sample(api, name, n=2, seed=3)["samples"]}
        )
        assert by_png.status_code == by_array.status_code == 200, by_png.text
        assert by_png.json()["log_likelihood"] == pytest.approx(by_array.json()["log_likelihood"], rel=1e-5)


def test_client_errors_are_4xx_with_a_reason(api: httpx.Client, cards: dict[str, dict[str, Any]]) -> None:
    model = next(iter(cards))
    unknown = api.post("/sample", json={"model": "no-such-model", "n": 1})
    assert unknown.status_code == 404
    assert "expected one of" in unknown.json()["detail"]
    too_many = api.post("/sample", json={"model": model, "n": 100_000})
    assert too_many.status_code == 413
    assert "MAX_SAMPLES" in too_many.json()["detail"]
    hot = api.post("/sample", json={"model": model, "n": 1, "temperature": 5})
    assert hot.status_code == 422
    wrong_shape = api.post("/log-likelihood", json={"model": model, "inputs": [[1.0] * 7]})
    assert wrong_shape.status_code == 422
    assert "expected" in wrong_shape.json()["detail"]


def test_metrics_expose_the_traffic(api: httpx.Client, cards: dict[str, dict[str, Any]]) -> None:
    text = httpx.get(f"{API_URL}/metrics", timeout=10).text
    for name in cards:
        assert f'realnvp_model_ready{{model="{name}"}} 1.0' in text
        assert re.search(rf'realnvp_requests_total{{endpoint="/sample",model="{re.escape(name)}",status="200"}} ', text)
    assert 'status="404"' in text
    for family in ("realnvp_batch_size_samples_bucket", "realnvp_queue_depth_samples", "realnvp_inference_seconds"):
        assert family in text


# --- Prometheus and the Grafana dashboard's queries ------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus() -> str:
    if not PROMETHEUS_URL:
        pytest.skip("needs PROMETHEUS_URL")
    return PROMETHEUS_URL


def test_prometheus_scrapes_the_api(prometheus: str, cards: dict[str, dict[str, Any]]) -> None:
    up = wait_for_result('up{job="api"}', lambda r: r and all(s["value"][1] == "1" for s in r))
    assert len(up) == 1, f"expected one api target, got {up}"
    ready = wait_for_result('realnvp_model_ready{job="api"}', lambda r: len(r) >= len(cards))
    assert {s["metric"]["model"] for s in ready} == set(cards)
    assert all(s["value"][1] == "1" for s in ready)
    wait_for_result('realnvp_requests_total{job="api",endpoint="/sample",status="200"}')


def test_dashboard_queries_return_data(prometheus: str, api: httpx.Client) -> None:
    # rate() over 1m needs two scrapes after the traffic; a little more traffic keeps every series moving.
    model = api.get("/models").json()["models"][0]["name"]
    sample(api, model, n=2, seed=0)
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for panel in panels:
        exprs = [target["expr"].replace("$__rate_interval", "1m") for target in panel["targets"]]
        for expr in exprs:
            prometheus_query(expr)  # valid PromQL
        combined = " or ".join(f"({expr})" for expr in exprs)
        wait_for_result(combined, timeout_s=60, what=f"panel '{panel['title']}' has no data")


# --- the retrained model after `restart api` --------------------------------------------------------------------


def test_reload_serves_the_retrained_model(api: httpx.Client, cards: dict[str, dict[str, Any]]) -> None:
    expected = os.environ.get("E2E_EXPECT_VERSION")
    trained = os.environ.get("E2E_TRAINED_MODEL")
    if not (expected and trained):
        pytest.skip("runs in the reload step of docker/e2e.sh")
    assert cards[trained]["version"] == expected
    assert sample(api, trained, n=2, seed=0)["shape"] == [2, *cards[trained]["shape"]]


# --- scale out: N replicas behind the balancer -----------------------------------------------------------------


def test_replicas_share_the_traffic(api: httpx.Client, cards: dict[str, dict[str, Any]]) -> None:
    replicas = int(os.environ.get("E2E_REPLICAS", "0"))
    if replicas < 2 or not PROMETHEUS_URL:
        pytest.skip("runs in the scale step of docker/e2e.sh")
    wait_for_result('up{job="api"} == 1', lambda r: len(r) == replicas)
    model = next(iter(cards))
    for seed in range(8 * replicas):
        sample(api, model, n=1, seed=seed)
    served = wait_for_result(
        f'sum by (instance) (realnvp_requests_total{{job="api",endpoint="/sample",model="{model}",status="200"}})',
        lambda r: len(r) == replicas and all(float(s["value"][1]) > 0 for s in r),
    )
    assert len({s["metric"]["instance"] for s in served}) == replicas
