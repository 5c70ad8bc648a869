"""``/log-likelihood?dequantization=uniform``: the standard measure a client can compare with the card's figure."""

from __future__ import annotations

import math

import httpx
import pytest
import torch

from tests.support.helpers import digit_images

pytestmark = pytest.mark.anyio


def image_body(count: int = 3) -> dict:
    return {"model": "digits", "inputs": digit_images(count)[:, None].tolist()}


async def test_default_is_the_bin_centre_density_and_says_so(client: httpx.AsyncClient) -> None:
    body = (await client.post("/log-likelihood", json=image_body())).json()
    assert body["dequantization"] == {"method": "bin_centre", "samples": 1, "seed": None}
    vector = (await client.post("/log-likelihood", json={"model": "moons", "inputs": [[0.1, 0.2]]})).json()
    assert "dequantization" not in vector or vector["dequantization"] is None


async def test_uniform_is_seeded_and_independent_of_the_other_items(client: httpx.AsyncClient) -> None:
    body = image_body(3)
    params = {"dequantization": "uniform", "dequantization_samples": 4, "seed": 7}
    first = (await client.post("/log-likelihood", json=body, params=params)).json()
    again = (await client.post("/log-likelihood", json=body, params=params)).json()
    assert first["bits_per_dim"] == again["bits_per_dim"]
    assert first["dequantization"] == {"method": "uniform", "samples": 4, "seed": 7}
    alone = (await client.post("/log-likelihood", json={**body, "inputs": body["inputs"][:1]}, params=params)).json()
    assert alone["bits_per_dim"][0] == pytest.approx(first["bits_per_dim"][0], rel=1e-6)
    other = (await client.post("/log-likelihood", json=body, params={**params, "seed": 8})).json()
    assert other["bits_per_dim"] != first["bits_per_dim"]
    # the anomaly scores stay on the bin-centre density that the references use
    centre = (await client.post("/log-likelihood", json=body)).json()
    assert first["scores"]["nll"]["values"] == centre["scores"]["nll"]["values"]


async def test_uniform_is_log_mean_exp_of_seeded_draws_computed_by_hand(client: httpx.AsyncClient, store) -> None:
    """Item i's k draws are rows of one seeded ``(N, k, *shape)`` uniform tensor; P(x) ≈ mean_j p(x + u_ij)."""
    body = image_body(2)
    params = {"dequantization": "uniform", "dequantization_samples": 8, "seed": 3}
    served = (await client.post("/log-likelihood", json=body, params=params)).json()["log_likelihood"]
    module = torch.jit.load(str(store / "digits" / "model.ts"))
    x = torch.tensor(body["inputs"], dtype=torch.float32)
    noise = torch.rand((2, 8, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z, log_det = module.encode((x.unsqueeze(1) + noise).reshape(16, 1, 8, 8))
    z = z.double()
    draws = (-0.5 * (z.square().sum(1) + 64 * math.log(2 * math.pi)) + log_det.double()).reshape(2, 8)
    expected = torch.logsumexp(draws, dim=1) - math.log(8)
    assert served == pytest.approx(expected.tolist(), abs=1e-3)
    assert all(e >= m for e, m in zip(expected.tolist(), draws.mean(dim=1).tolist(), strict=True))  # Jensen


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"dequantization": "gaussian"}, 422, "dequantization"),
        ({"dequantization": "uniform", "dequantization_samples": 0}, 422, "dequantization_samples"),
        ({"dequantization": "uniform", "dequantization_samples": 65}, 422, "dequantization_samples"),
        ({"dequantization_samples": 4}, 422, "expected dequantization=uniform to use them, got bin_centre"),
        ({"seed": 1}, 422, "seed: expected dequantization=uniform"),
    ],
)
async def test_bad_dequantization_parameters_get_a_422_that_says_what_was_expected(
    client: httpx.AsyncClient, params: dict, status: int, message: str
) -> None:
    response = await client.post("/log-likelihood", json=image_body(1), params=params)
    assert response.status_code == status
    assert message in response.json()["detail"]


async def test_uniform_on_a_vector_model_and_too_many_draws_are_refused(open_client) -> None:
    async with open_client(max_samples=8) as client:
        vector = await client.post(
            "/log-likelihood", json={"model": "moons", "inputs": [[0.0, 0.0]]}, params={"dequantization": "uniform"}
        )
        assert vector.status_code == 422 and "expected 'bin_centre' for vector model 'moons'" in vector.json()["detail"]
        many = await client.post(
            "/log-likelihood", json=image_body(3), params={"dequantization": "uniform", "dequantization_samples": 4}
        )
        assert many.status_code == 413 and "inputs × dequantization_samples" in many.json()["detail"]
