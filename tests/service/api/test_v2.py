"""The Open Inference Protocol (KServe V2) routes in-process: metadata, infer, and every malformed body."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.conftest import OpenClient
from tests.support.anomaly_store import bar_images, moon_points
from tests.support.helpers import digit_images, metric_value

pytestmark = pytest.mark.anyio
INFER = "/v2/models/{}/infer"


def tensor(items: np.ndarray, datatype: str = "UINT8", flat: bool = True, name: str = "input") -> dict[str, Any]:
    data = items.reshape(-1).tolist() if flat else items.tolist()
    return {"name": name, "shape": list(items.shape), "datatype": datatype, "data": data}


def outputs_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {output["name"]: output for output in body["outputs"]}


async def test_server_health_and_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).status_code == 200
    server = (await client.get("/v2")).json()
    assert server["name"] == "realnvp-service" and "binary_tensor_data" in server["extensions"]


async def test_model_metadata_names_datatypes_and_batch_dimension(client: httpx.AsyncClient) -> None:
    digits = (await client.get("/v2/models/digits")).json()
    assert digits["name"] == "digits" and digits["versions"] == ["0.0.1"]
    assert digits["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 1, 8, 8]}]
    # the tiny store's cards have no reference scores: no anomaly outputs are offered
    assert digits["outputs"] == [
        {"name": "log_likelihood", "datatype": "FP64", "shape": [-1]},
        {"name": "bits_per_dim", "datatype": "FP64", "shape": [-1]},
    ]
    moons = (await client.get("/v2/models/moons")).json()
    assert moons["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}]
    assert (await client.get("/v2/models/moons/ready")).json() == {"ready": True}
    assert (await client.get("/v2/models/moons/versions/0.0.1/ready")).status_code == 200


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/models/nope", "model: expected one of ['digits', 'moons'], got 'nope'"),
        ("/v2/models/nope/ready", "model: expected one of ['digits', 'moons'], got 'nope'"),
        ("/v2/models/digits/versions/9.9/ready", "version: expected one of ['0.0.1'] for model 'digits', got '9.9'"),
        ("/v2/models/digits/versions/2", "version: expected one of ['0.0.1'] for model 'digits', got '2'"),
    ],
)
async def test_unknown_models_and_versions_are_404(client: httpx.AsyncClient, path: str, expected: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404 and response.json() == {"error": expected}


@pytest.mark.parametrize(("datatype", "flat"), [("UINT8", True), ("UINT8", False), ("FP32", True), ("INT64", False)])
async def test_infer_matches_log_likelihood(client: httpx.AsyncClient, datatype: str, flat: bool) -> None:
    images = digit_images(3, seed=4)[:, None]
    body = {"id": "req-7", "inputs": [tensor(images, datatype, flat)]}
    response = await client.post(INFER.format("digits"), json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "digits" and answer["model_version"] == "0.0.1" and answer["id"] == "req-7"
    native = (await client.post("/log-likelihood", json={"model": "digits", "inputs": images.tolist()})).json()
    outputs = outputs_of(answer)
    assert outputs["log_likelihood"]["datatype"] == "FP64" and outputs["log_likelihood"]["shape"] == [3]
    np.testing.assert_allclose(outputs["log_likelihood"]["data"], native["log_likelihood"], rtol=1e-6)
    np.testing.assert_allclose(outputs["bits_per_dim"]["data"], native["bits_per_dim"], rtol=1e-6)


async def test_vector_infer_and_requested_outputs_in_order(client: httpx.AsyncClient) -> None:
    points = np.array([[0.5, -0.25], [1.0, 0.1]], dtype=np.float32)
    body = {"inputs": [tensor(points, "FP32")], "outputs": [{"name": "bits_per_dim"}]}
    answer = (await client.post(INFER.format("moons"), json=body)).json()
    assert [output["name"] for output in answer["outputs"]] == ["bits_per_dim"] and "id" not in answer
    native = (await client.post("/log-likelihood", json={"model": "moons", "inputs": points.tolist()})).json()
    np.testing.assert_allclose(answer["outputs"][0]["data"], native["bits_per_dim"], rtol=1e-6)


async def test_binary_extension_in_and_out(client: httpx.AsyncClient) -> None:
    images = digit_images(2, seed=5)[:, None].astype(np.float32)
    raw = images.tobytes()
    header = {
        "inputs": [
            {"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
        ],
        "outputs": [{"name": "log_likelihood", "parameters": {"binary_data": True}}, {"name": "bits_per_dim"}],
    }
    head = json.dumps(header).encode()
    response = await client.post(
        INFER.format("digits"), content=head + raw, headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:length])
    outputs = outputs_of(answer)
    assert (
        outputs["log_likelihood"]["parameters"] == {"binary_data_size": 16} and "data" not in outputs["log_likelihood"]
    )
    binary_nats = np.frombuffer(response.content[length:], dtype="<f8")
    native = (await client.post("/log-likelihood", json={"model": "digits", "inputs": images.tolist()})).json()
    np.testing.assert_allclose(binary_nats, native["log_likelihood"], rtol=1e-6)
    np.testing.assert_allclose(outputs["bits_per_dim"]["data"], native["bits_per_dim"], rtol=1e-6)


async def test_anomaly_outputs_match_anomaly_route(anomaly_client: httpx.AsyncClient) -> None:
    images = np.concatenate([bar_images(3, seed=11), np.full((1, 1, 8, 8), 255, dtype=np.uint8)])
    body = {"inputs": [tensor(images)], "parameters": {"fpr": 0.05}}
    answer = (await anomaly_client.post(INFER.format("digits"), json=body)).json()
    outputs = outputs_of(answer)
    assert list(outputs) == ["log_likelihood", "bits_per_dim", "anomaly_score", "anomaly_p_value", "is_anomaly"]
    assert outputs["is_anomaly"]["datatype"] == "BOOL"
    native = (
        await anomaly_client.post("/anomaly", json={"model": "digits", "inputs": images.tolist(), "fpr": 0.05})
    ).json()
    assert native["score"] == "combined"
    np.testing.assert_allclose(outputs["anomaly_score"]["data"], native["scores"]["combined"]["values"], rtol=1e-6)
    assert outputs["anomaly_p_value"]["data"] == native["scores"]["combined"]["p_value"]
    assert outputs["is_anomaly"]["data"] == native["is_anomaly"] and outputs["is_anomaly"]["data"][-1] is True
    vector = tensor(moon_points(2, seed=3), "FP32")
    moons = outputs_of((await anomaly_client.post(INFER.format("moons"), json={"inputs": [vector]})).json())
    np.testing.assert_allclose(moons["anomaly_score"]["data"], moons["bits_per_dim"]["data"])  # nll decides


GOOD = tensor(digit_images(2)[:, None])


def with_input(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{**GOOD, **changes}]}


MALFORMED = [
    ("wrong shape", with_input(shape=[2, 64]), "inputs.0.shape: expected [N, 1, 8, 8] for model 'digits', got [2, 64]"),
    ("no batch dimension", with_input(shape=[1, 8, 8]), "inputs.0.shape: expected [N, 1, 8, 8]"),
    ("empty batch", with_input(shape=[0, 1, 8, 8], data=[]), "inputs.0.shape: expected at least one item, got [0"),
    ("BOOL datatype", with_input(datatype="BOOL"), "inputs.0.datatype: expected one of UINT8, UINT16"),
    ("lower-case datatype", with_input(datatype="fp32"), "got 'fp32'"),
    ("BYTES datatype", with_input(datatype="BYTES"), "inputs.0.datatype: expected one of"),
    ("too few values", with_input(data=GOOD["data"][:-1]), "inputs.0.data: expected 128 values for its shape, got 127"),
    ("too many values", with_input(data=[*GOOD["data"], 0]), "expected 128 values for its shape, got 129"),
    (
        "ragged nested data",
        with_input(data=[[1, 2], [3]]),
        "inputs.0.data: expected a flat or rectangular nested array",
    ),
    ("boolean values", with_input(data=[True] * 128), "inputs.0.data: expected numbers of datatype UINT8, got True"),
    ("string values", with_input(data=["7"] * 128), "expected numbers of datatype UINT8, got '7'"),
    ("UINT8 out of range", with_input(data=[300] * 128), "expected integers in [0, 255] (UINT8), got 300"),
    ("fractional INT32", with_input(datatype="INT32", data=[1.5] * 128), "expected integers in [-2147483648"),
    (
        "FP32 overflow",
        with_input(datatype="FP32", data=[1e39] * 128),
        "expected values representable as FP32, got 1e+39",
    ),
    ("pixel outside 0..255", with_input(datatype="INT32", data=[256] * 128), "expected values in [0, 255], got 256"),
    ("fractional pixel", with_input(datatype="FP32", data=[0.5] * 128), "expected integer 8-bit pixel values, got 0.5"),
    (
        "missing data",
        {"inputs": [{k: v for k, v in GOOD.items() if k != "data"}]},
        "inputs.0.data: expected the tensor",
    ),
    ("missing inputs", {"id": "x"}, "inputs: expected this field, it is required, got nothing"),
    ("no inputs", {"inputs": []}, "inputs: expected at least 1 items"),
    ("wrong input name", with_input(name="x"), "inputs: expected one tensor named 'input', got ['x']"),
    ("two inputs", {"inputs": [GOOD, GOOD]}, "inputs: expected one tensor named 'input', got ['input', 'input']"),
    ("shape as string", with_input(shape="2,1,8,8"), "inputs.0.shape: expected a valid array"),
    ("negative shape", with_input(shape=[-1, 1, 8, 8]), "inputs.0.shape.0: expected greater than or equal to 0"),
    ("unknown field", {**with_input(), "model": "digits"}, "model: expected no such field"),
    (
        "unknown output",
        {**with_input(), "outputs": [{"name": "z"}]},
        "outputs.0.name: expected one of ['log_likelihood'",
    ),
    (
        "fpr out of range",
        {**with_input(), "parameters": {"fpr": 1.5}},
        "parameters.fpr: expected a number in (0, 1), got 1.5",
    ),
    ("id not a string", {**with_input(), "id": 7}, "id: expected a valid string, got 7"),
    ("top level array", [GOOD], "expected a JSON object"),
]


@pytest.mark.parametrize(("body", "expected"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
async def test_malformed_bodies_are_400_saying_what_was_expected(
    client: httpx.AsyncClient, body: Any, expected: str
) -> None:
    response = await client.post(INFER.format("digits"), json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and expected in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "headers", "expected"),
    [
        (b"{", {}, "body: expected a valid JSON body, got invalid JSON"),
        (b'{"inputs": [{"name": "input"', {"content-type": "application/json"}, "expected a valid JSON body"),
        (b"{}", {"content-type": "text/plain"}, "content-type: expected application/json, application/octet-stream"),
        (b"{}", {"Inference-Header-Content-Length": "abc"}, "Inference-Header-Content-Length: expected an integer"),
        (b"{}", {"Inference-Header-Content-Length": "99"}, "between 1 and the body's 2 bytes, got '99'"),
    ],
)
async def test_unreadable_bodies_are_400(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str], expected: str
) -> None:
    response = await client.post(INFER.format("digits"), content=content, headers=headers)
    assert response.status_code == 400 and expected in response.json()["error"], response.text


@pytest.mark.parametrize(
    ("declared", "sent", "expected"),
    [
        (100, 128, "inputs.0.parameters.binary_data_size: expected 128 bytes (128 UINT8 values of 1 bytes"),
        (128, 100, "inputs.0: expected 128 bytes of binary data after the JSON header, got 100"),
        (128, 130, "body: expected 128 bytes of binary tensor data after the JSON header, got 130"),
    ],
)
async def test_binary_sizes_that_do_not_add_up_are_400(
    client: httpx.AsyncClient, declared: int, sent: int, expected: str
) -> None:
    header = with_input(data=None, parameters={"binary_data_size": declared})
    del header["inputs"][0]["data"]
    head = json.dumps(header).encode()
    response = await client.post(
        INFER.format("digits"), content=head + bytes(sent), headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert response.status_code == 400 and expected in response.json()["error"], response.text


async def test_limits_auth_and_metrics_as_native_routes(open_client: OpenClient) -> None:
    async with open_client(API_KEY="s3cret", MAX_SAMPLES=4, MAX_BODY_BYTES=20_000) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200  # probes need no key
        refused = await client.post(INFER.format("digits"), json=with_input())
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert refused.json() == {"error": "expected header 'Authorization: Bearer <API_KEY>', got no bearer token"}
        assert (await client.get("/v2/models/digits")).status_code == 401
        client.headers["Authorization"] = "Bearer s3cret"
        many = tensor(digit_images(5)[:, None])
        too_many = await client.post(INFER.format("digits"), json={"inputs": [many]})
        assert too_many.status_code == 413
        assert too_many.json() == {"error": "inputs.0.shape.0: expected at most MAX_SAMPLES = 4 items, got 5"}
        huge = await client.post(INFER.format("digits"), content=b" " * 30_000)
        assert huge.status_code == 413 and "MAX_BODY_BYTES = 20000" in huge.json()["error"]
        assert (await client.post(INFER.format("digits"), json=with_input())).status_code == 200
        metrics = (await client.get("/metrics")).text
    labels = {"endpoint": "/v2/models/{name}/infer", "model": "digits"}
    assert metric_value(metrics, "realnvp_requests_total", **labels, status="200") == 1
    assert metric_value(metrics, "realnvp_requests_total", **labels, status="413") == 1


async def test_v2_requests_share_batches_with_native_ones(open_client: OpenClient) -> None:
    async with open_client(MAX_WAIT_MS=300, MAX_BATCH_SIZE=64) as client:
        images = digit_images(2)[:, None]
        v2 = [client.post(INFER.format("digits"), json={"inputs": [tensor(images)]}) for _ in range(3)]
        native = client.post("/log-likelihood", json={"model": "digits", "inputs": images.tolist()})
        answers = await asyncio.gather(*v2, native)
        assert all(answer.status_code == 200 for answer in answers)
        metrics = (await client.get("/metrics")).text
    labels = {"model": "digits", "direction": "encode"}
    batches = metric_value(metrics, "realnvp_batch_size_samples_count", **labels)
    samples = metric_value(metrics, "realnvp_batch_size_samples_sum", **labels)
    assert samples == 8 and batches < 4, (batches, samples)  # 4 requests of 2 items, merged into fewer batches
