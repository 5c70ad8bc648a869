"""Batching through the HTTP API: it happens, it does not change answers, and overload/deadlines/faults."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch

from tests.support.helpers import digit_images, metric_value

pytestmark = pytest.mark.anyio


async def test_concurrent_requests_are_batched(open_client) -> None:
    async with open_client(MAX_BATCH_SIZE=16, MAX_WAIT_MS=100) as client:
        images = digit_images(16)[:, None].tolist()
        responses = await asyncio.gather(
            *(client.post("/log-likelihood", json={"model": "digits", "inputs": [image]}) for image in images)
        )
        assert all(r.status_code == 200 for r in responses)
        text = (await client.get("/metrics")).text
        labels = {"model": "digits", "direction": "encode"}
        batches = metric_value(text, "realnvp_batch_size_samples_count", **labels)
        samples = metric_value(text, "realnvp_batch_size_samples_sum", **labels)
        single = metric_value(text, "realnvp_batch_size_samples_bucket", le="1.0", **labels)
        assert samples == 16
        assert batches < 16 and single < batches  # at least one batch held more than one sample


class RecordingModule:
    """Wraps a TorchScript module; keeps every batch ``encode`` receives."""

    def __init__(self, inner: torch.jit.ScriptModule) -> None:
        self.inner = inner
        self.encoded: list[torch.Tensor] = []

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.encoded.append(x.to("cpu", copy=True))  # the runner hands over device tensors (CUDA or CPU)
        return self.inner.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(z)


async def test_a_rows_score_does_not_depend_on_its_batch(open_client) -> None:
    pixels = digit_images(6, seed=21)[:, None].tolist()
    noise = digit_images(40, seed=22)[:, None].tolist()
    async with open_client(MAX_BATCH_SIZE=1) as client:
        alone = [
            (await client.post("/log-likelihood", json={"model": "digits", "inputs": [p]})).json()["log_likelihood"][0]
            for p in pixels
        ]
    # A window long enough for every request to be queued before the first batch closes, even on a loaded
    # machine (a batch that cannot take the next request closes at once; only the last one waits it out).
    async with open_client(MAX_BATCH_SIZE=32, MAX_WAIT_MS=1000) as client:
        runner = client.app.state.context.registry.models["digits"].runner  # type: ignore[attr-defined]
        recorder = RecordingModule(runner.module)
        runner.module = recorder
        requests = [client.post("/log-likelihood", json={"model": "digits", "inputs": [p]}) for p in pixels]
        busy = [
            client.post("/log-likelihood", json={"model": "digits", "inputs": noise[i : i + 5]})
            for i in range(0, 40, 5)
        ]
        answers = await asyncio.gather(*requests, *busy)
        batched = [r.json()["log_likelihood"][0] for r in answers[: len(pixels)]]
    # The guard: each probe row was scored in a batch with rows of other requests, busy ones among them.
    probes = torch.tensor(pixels, dtype=torch.float32) + 0.5  # what encode receives: bin centres
    others = torch.tensor(noise, dtype=torch.float32) + 0.5
    for probe in probes:
        (batch,) = [b for b in recorder.encoded if (b == probe).flatten(1).all(1).any()]
        holds_busy_rows = (batch[:, None] == others[None]).flatten(2).all(2).any()
        assert len(batch) > 1 and holds_busy_rows, [len(b) for b in recorder.encoded]
    assert sum(len(b) for b in recorder.encoded) == 46
    # CPU kernels here do not depend on the batch; cuDNN picks its algorithm per batch size, and those round
    # differently (TF32 is off for scoring, so in float32): a relative tolerance there. A row scored with another
    # row's data would be off by whole nats either way.
    tolerance = {"rtol": 0, "atol": 1e-5} if runner.device.type == "cpu" else {"rtol": 1e-5, "atol": 1e-4}
    np.testing.assert_allclose(batched, alone, **tolerance)


async def test_seeded_samples_are_identical_under_load(open_client) -> None:
    request = {"model": "digits", "n": 3, "seed": 99, "temperature": 0.9}
    vector_request = {**request, "model": "moons"}
    async with open_client(MAX_BATCH_SIZE=32, MAX_WAIT_MS=50) as client:
        alone = (await client.post("/sample", json=request)).json()
        vector_alone = (await client.post("/sample", json=vector_request)).json()
        answers = await asyncio.gather(
            *(client.post("/sample", json={"model": "digits", "n": 4}) for _ in range(3)),
            client.post("/sample", json=request),
            *(client.post("/sample", json={"model": "digits", "n": 4}) for _ in range(3)),
            *(client.post("/sample", json={"model": "moons", "n": 7}) for _ in range(2)),
            client.post("/sample", json=vector_request),
            *(client.post("/sample", json={"model": "moons", "n": 7}) for _ in range(2)),
            client.post("/decode", json={"model": "moons", "latents": [[0.1, 0.2]] * 5}),
        )
        text = (await client.get("/metrics")).text
    assert answers[3].json() == alone
    assert answers[9].json() == vector_alone
    # the unseeded requests around them were batched together
    assert metric_value(text, "realnvp_batch_size_samples_count", model="moons", direction="decode") < 2 + 5


async def test_overload_answers_503_with_retry_after(open_client) -> None:
    async with open_client(MAX_BATCH_SIZE=64, MAX_WAIT_MS=500, MAX_QUEUE=4, MAX_SAMPLES=4) as client:
        waiting = [asyncio.ensure_future(client.post("/sample", json={"model": "moons", "n": 2})) for _ in range(2)]
        await asyncio.sleep(0.1)
        refused = await client.post("/sample", json={"model": "moons", "n": 1})
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert "queue of model 'moons' is full" in refused.json()["detail"]
        assert all(r.status_code == 200 for r in await asyncio.gather(*waiting))
        assert (await client.post("/sample", json={"model": "moons", "n": 1})).status_code == 200
        text = (await client.get("/metrics")).text
        assert metric_value(text, "realnvp_requests_total", endpoint="/sample", model="moons", status="503") == 1


async def test_deadline_answers_504_and_drops_the_work(open_client) -> None:
    async with open_client(MAX_BATCH_SIZE=64, MAX_WAIT_MS=2000, REQUEST_TIMEOUT_S=0.2) as client:
        response = await client.post("/sample", json={"model": "moons", "n": 2})
        assert response.status_code == 504
        assert "expected to finish within the request timeout" in response.json()["detail"]
        await asyncio.sleep(0.1)
        text = (await client.get("/metrics")).text
        assert metric_value(text, "realnvp_batch_size_samples_count", model="moons") == 0  # never ran
        assert metric_value(text, "realnvp_queue_depth_samples", model="moons") == 0
        assert (await client.get("/models/moons")).status_code == 200  # still serving


class FaultyModule:
    """Wraps a TorchScript module; ``decode`` raises for latents containing 1234."""

    def __init__(self, inner: torch.jit.ScriptModule) -> None:
        self.inner = inner

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if (z == 1234).any():
            raise RuntimeError("simulated device fault")
        return self.inner.decode(z)


async def test_a_failed_batch_fails_only_its_requests(open_client) -> None:
    async with open_client(MAX_BATCH_SIZE=2, MAX_WAIT_MS=50) as client:
        runner = client.app.state.context.registry.models["moons"].runner  # type: ignore[attr-defined]
        runner.module = FaultyModule(runner.module)
        poisoned = client.post("/decode", json={"model": "moons", "latents": [[1234, 0], [0, 0]]})
        clean = client.post("/decode", json={"model": "moons", "latents": [[0.5, 0], [0, 0.5]]})
        bad, good = await asyncio.gather(poisoned, clean)
        assert bad.status_code == 500 and "simulated device fault" in bad.json()["detail"]
        assert good.status_code == 200
        assert (await client.post("/sample", json={"model": "moons", "n": 2})).status_code == 200


async def test_metrics_cover_requests_queue_batches_and_models(client: httpx.AsyncClient) -> None:
    await client.post("/sample", json={"model": "moons", "n": 3})
    await client.post("/log-likelihood", json={"model": "moons", "inputs": [[0, 0]]})
    await client.post("/sample", json={"model": "nope"})
    text = (await client.get("/metrics")).text
    assert metric_value(text, "realnvp_requests_total", endpoint="/sample", model="moons", status="200") >= 1
    assert metric_value(text, "realnvp_requests_total", endpoint="/sample", model="", status="404") >= 1
    assert metric_value(text, "realnvp_request_latency_seconds_count", endpoint="/log-likelihood") >= 1
    assert metric_value(text, "realnvp_queue_wait_seconds_count", model="moons") >= 2
    assert metric_value(text, "realnvp_inference_seconds_count", model="moons", operation="decode") >= 1
    assert metric_value(text, "realnvp_inference_seconds_count", model="moons", operation="encode") >= 1
    assert metric_value(text, "realnvp_samples_generated_total", model="moons") >= 3
    assert metric_value(text, "realnvp_model_info", model="digits", flow_type="RealNVP", data_kind="image") == 1
    assert metric_value(text, "realnvp_model_ready", model="moons") == 1
    assert "realnvp_queue_depth_samples" in text
