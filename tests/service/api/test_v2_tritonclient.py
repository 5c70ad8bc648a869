"""The Open Inference Protocol checked with a client nobody here wrote: ``tritonclient[http]`` against a real server.

The answers are compared with the native routes of the same server for the same items.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.anomaly_store import bar_images, moon_points
from tests.support.server import spawn_server

triton = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the importorskip)


@pytest.fixture(scope="module")
def server(anomaly_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("v2") / "server.log"
    with spawn_server(anomaly_store, log, env={"TORCH_THREADS": "1", "LOG_LEVEL": "warning"}) as (_, url):
        yield url


@pytest.fixture(scope="module")
def triton_client(server: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    yield client
    client.close()


def native(server: str, route: str, model: str, items: np.ndarray) -> dict:
    response = httpx.post(f"{server}/{route}", json={"model": model, "inputs": items.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("digits") and triton_client.is_model_ready("moons")
    assert not triton_client.is_model_ready("nope")
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]
    metadata = triton_client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 1, 8, 8]}]
    names = [output["name"] for output in metadata["outputs"]]
    assert names == ["log_likelihood", "bits_per_dim", "anomaly_score", "anomaly_p_value", "is_anomaly"]
    assert triton_client.get_model_metadata("moons", model_version="1.0.0")["inputs"][0]["shape"] == [-1, 2]


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_images_match_the_native_routes(
    triton_client: triton.InferenceServerClient, server: str, datatype: str, binary: bool
) -> None:
    images = np.concatenate([bar_images(5, seed=21), np.zeros((1, 1, 8, 8), dtype=np.uint8)])
    given = triton.InferInput("input", list(images.shape), datatype)
    given.set_data_from_numpy(images.astype(np.uint8 if datatype == "UINT8" else np.float32), binary_data=binary)
    result = triton_client.infer("digits", [given], request_id="batch-1")
    assert result.get_response()["id"] == "batch-1" and result.get_response()["model_name"] == "digits"
    scored = native(server, "log-likelihood", "digits", images)
    decided = native(server, "anomaly", "digits", images)
    np.testing.assert_allclose(result.as_numpy("log_likelihood"), scored["log_likelihood"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("bits_per_dim"), scored["bits_per_dim"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("anomaly_score"), decided["scores"]["combined"]["values"], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("anomaly_p_value"), decided["scores"]["combined"]["p_value"])
    assert result.as_numpy("is_anomaly").tolist() == decided["is_anomaly"]
    assert result.as_numpy("bits_per_dim").dtype == np.float64


def test_vectors_and_chosen_outputs(triton_client: triton.InferenceServerClient, server: str) -> None:
    points = moon_points(7, seed=5)
    given = triton.InferInput("input", list(points.shape), "FP32")
    given.set_data_from_numpy(points)
    wanted = [triton.InferRequestedOutput("bits_per_dim"), triton.InferRequestedOutput("is_anomaly", binary_data=False)]
    result = triton_client.infer("moons", [given], outputs=wanted, parameters={"fpr": 0.2})
    assert [output["name"] for output in result.get_response()["outputs"]] == ["bits_per_dim", "is_anomaly"]
    assert result.as_numpy("log_likelihood") is None
    body = httpx.post(f"{server}/anomaly", json={"model": "moons", "inputs": points.tolist(), "fpr": 0.2}).json()
    np.testing.assert_allclose(result.as_numpy("bits_per_dim"), body["scores"]["nll"]["values"], rtol=1e-6)
    assert result.as_numpy("is_anomaly").tolist() == body["is_anomaly"]


def test_errors_reach_the_client_with_status_and_reason(triton_client: triton.InferenceServerClient) -> None:
    flat = triton.InferInput("input", [2, 64], "UINT8")
    flat.set_data_from_numpy(bar_images(2, seed=1).reshape(2, 64))
    with pytest.raises(InferenceServerException) as wrong_shape:
        triton_client.infer("digits", [flat])
    assert wrong_shape.value.status() == "400"
    assert wrong_shape.value.message() == "inputs.0.shape: expected [N, 1, 8, 8] for model 'digits', got [2, 64]"
    with pytest.raises(InferenceServerException) as unknown:
        triton_client.get_model_metadata("cifar")
    assert (
        unknown.value.status() == "404" and "expected one of ['digits', 'legacy', 'moons']" in unknown.value.message()
    )
    with pytest.raises(InferenceServerException) as version:
        triton_client.get_model_metadata("digits", model_version="7")
    assert version.value.status() == "404" and "version: expected one of ['1.0.0']" in version.value.message()
