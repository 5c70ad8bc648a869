"""``precision`` over HTTP (offered for decodes, refused for scores) and the 503 of a device out of memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.engine.precision import native_bf16
from service.engine.registry import DECODE
from tests.support.helpers import digit_images, metric_value
from tests.support.inprocess import serve_in_process

pytestmark = pytest.mark.anyio

# Pixels of the test store's 1x8x8 flow, bf16 against fp32 (the engine tests state and measure the bound).
WORST_PIXEL_BOUND = 2


@pytest.fixture(scope="module")
async def bf16_client(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An app that offers bf16 whatever the CPU (``ALLOW_BF16=true``; ``auto`` offers it only where native)."""
    async with serve_in_process(store, max_batch_size=8, max_wait_ms=2, allow_bf16="true") as shared:
        yield shared


async def test_bf16_samples_are_close_to_fp32_and_reproducible(bf16_client: httpx.AsyncClient) -> None:
    client = bf16_client
    request = {"model": "digits", "n": 16, "seed": 11}
    exact = np.array((await client.post("/sample", json=request)).json()["samples"])
    first = await client.post("/sample", json={**request, "precision": "bf16"})
    second = await client.post("/sample", json={**request, "precision": "bf16"})
    assert first.status_code == 200, first.text
    reduced = np.array(first.json()["samples"])
    assert reduced.tolist() == second.json()["samples"]  # seeded bf16: bit-identical answers
    assert reduced.shape == exact.shape
    assert np.abs(reduced - exact).max() <= WORST_PIXEL_BOUND


async def test_bf16_is_offered_on_every_decode_route(bf16_client: httpx.AsyncClient) -> None:
    client = bf16_client
    png = await client.get("/sample.png", params={"model": "digits", "n": 4, "seed": 1, "precision": "bf16"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    decoded = await client.post("/decode", json={"model": "moons", "latents": [[0.0, 0.0]], "precision": "bf16"})
    assert decoded.status_code == 200, decoded.text
    request = {"model": "moons", "inputs": [[0, 0], [1, 1]], "steps": 3, "precision": "bf16"}
    path = await client.post("/interpolate", json=request)
    assert path.status_code == 200, path.text
    exact = (await client.post("/interpolate", json={**request, "precision": "fp32"})).json()["samples"]
    np.testing.assert_allclose(path.json()["samples"], exact, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("path", ["/log-likelihood", "/log-likelihood?dequantization=uniform", "/encode", "/anomaly"])
async def test_scores_refuse_bf16_with_a_clear_422(bf16_client: httpx.AsyncClient, path: str) -> None:
    client = bf16_client
    body = {"model": "digits", "inputs": digit_images(1)[:, None].tolist(), "precision": "bf16"}
    response = await client.post(path, json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("precision: expected 'fp32' (scores and latents are computed in exact float32 only")
    assert detail.endswith("got 'bf16'") and "/sample" in detail


async def test_explicit_fp32_scores_are_accepted(client: httpx.AsyncClient) -> None:
    body = {"model": "digits", "inputs": digit_images(1)[:, None].tolist()}
    plain = (await client.post("/log-likelihood", json=body)).json()
    explicit = await client.post("/log-likelihood", json={**body, "precision": "fp32"})
    assert explicit.status_code == 200 and explicit.json()["log_likelihood"] == plain["log_likelihood"]


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("post", "/sample", {"json": {"model": "digits", "precision": "fp16"}}),
        ("get", "/sample.png", {"params": {"model": "digits", "precision": "half"}}),
        ("post", "/decode", {"json": {"model": "moons", "latents": [[0.0, 0.0]], "precision": "bfloat16"}}),
    ],
)
async def test_unknown_precisions_are_a_422_naming_the_choices(
    client: httpx.AsyncClient, method: str, path: str, payload: dict
) -> None:
    response = await getattr(client, method)(path, **payload)
    assert response.status_code == 422
    assert "precision: expected 'fp32' or 'bf16', got" in response.json()["detail"]


@pytest.mark.parametrize("allow", ["false", "auto"])
async def test_bf16_is_refused_where_it_is_off(open_client, allow: str) -> None:
    async with open_client(ALLOW_BF16=allow) as client:
        requests = [
            client.post("/sample", json={"model": "digits", "precision": "bf16"}),
            client.get("/sample.png", params={"model": "digits", "precision": "bf16"}),
            client.post("/decode", json={"model": "moons", "latents": [[0.0, 0.0]], "precision": "bf16"}),
            client.post("/interpolate", json={"model": "moons", "inputs": [[0, 0], [1, 1]], "precision": "bf16"}),
        ]
        responses = await asyncio.gather(*requests)
        fp32 = await client.post("/sample", json={"model": "digits", "precision": "fp32"})
    assert fp32.status_code == 200
    if allow == "auto" and native_bf16(torch.device("cpu")):
        assert all(r.status_code == 200 for r in responses)  # a CPU with AVX512-BF16 or AMX: offered
        return
    for response in responses:
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert detail.startswith("precision: expected 'fp32' on this server (bf16 is off: ") and detail.endswith(
            "got 'bf16'"
        )
        assert ("ALLOW_BF16 is false" if allow == "false" else "no native bfloat16") in detail


async def test_fp32_and_bf16_requests_run_in_separate_batches(open_client) -> None:
    async with open_client(MAX_BATCH_SIZE=32, MAX_WAIT_MS=500, ALLOW_BF16="true") as client:
        served = client.app.state.context.registry.models["moons"]  # type: ignore[attr-defined]
        decode = served.batcher._operations[DECODE]
        seen: list[tuple[str, int]] = []

        def recording(z: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
            seen.append((precision, int(z.shape[0])))
            return decode(z, precision)

        served.batcher._operations[DECODE] = recording
        requests = [{"model": "moons", "n": 2, "precision": p} for p in ("fp32", "bf16", "fp32", "bf16")]
        responses = await asyncio.gather(*(client.post("/sample", json=body) for body in requests))
        assert all(r.status_code == 200 for r in responses)
    assert sorted(seen) == [("bf16", 4), ("fp32", 4)]


async def test_device_out_of_memory_is_a_503_and_the_model_stays_ready(open_client) -> None:
    async with open_client(MAX_BATCH_SIZE=8) as client:
        served = client.app.state.context.registry.models["digits"]  # type: ignore[attr-defined]
        decode = served.batcher._operations[DECODE]
        fits = {"rows": 2}

        def tight(z: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
            if z.shape[0] > fits["rows"]:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total ...")
            return decode(z, precision)

        served.batcher._operations[DECODE] = tight
        split = await client.post("/sample", json={"model": "digits", "n": 5, "seed": 1})
        assert split.status_code == 200 and len(split.json()["samples"]) == 5
        fits["rows"] = 0
        refused = await client.post("/sample", json={"model": "digits", "n": 3, "seed": 1})
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        detail = refused.json()["detail"]
        assert "out of device memory" in detail and "Tried to allocate" not in detail and "GiB" not in detail
        assert (await client.get("/readyz")).json()["status"] == "ready"
        fits["rows"] = 8
        assert (await client.post("/sample", json={"model": "digits", "n": 3})).status_code == 200
        text = (await client.get("/metrics")).text
        assert metric_value(text, "realnvp_device_out_of_memory_total", model="digits", outcome="refused") == 1
        assert metric_value(text, "realnvp_device_out_of_memory_total", model="digits", outcome="split") >= 2
