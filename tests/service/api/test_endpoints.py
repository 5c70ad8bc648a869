"""Every endpoint and output format, in-process, against untrained tiny flows."""

from __future__ import annotations

import base64
import io
import math
import re
import shutil

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.helpers import digit_images, png_b64

pytestmark = pytest.mark.anyio


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": {"digits": "ready", "moons": "ready"}, "failed": {}}


async def test_models_lists_cards_without_bulky_arrays(client: httpx.AsyncClient) -> None:
    body = (await client.get("/models")).json()
    names = [card["name"] for card in body["models"]]
    assert names == ["digits", "moons"]
    assert body["unavailable"] == {}
    assert body["default_model"] is None
    for card in body["models"]:
        assert "reference_scores" not in card
        assert len(card["sha256"]) == 64
    digits = (await client.get("/models/digits")).json()
    assert digits["shape"] == [1, 8, 8] and digits["flow_type"] == "RealNVP" and digits["dimension"] == 64
    assert "reference_scores" not in digits


async def test_sample_image_array(client: httpx.AsyncClient) -> None:
    response = await client.post("/sample", json={"model": "digits", "n": 3, "seed": 1, "temperature": 0.7})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "digits" and body["shape"] == [3, 1, 8, 8]
    samples = np.array(body["samples"])
    assert samples.shape == (3, 1, 8, 8)
    assert samples.dtype.kind == "i" and samples.min() >= 0 and samples.max() <= 255


async def test_sample_vector_array(client: httpx.AsyncClient) -> None:
    body = (await client.post("/sample", json={"model": "moons", "n": 5, "seed": 3})).json()
    samples = np.array(body["samples"])
    assert body["shape"] == [5, 2] and samples.shape == (5, 2)
    assert samples.dtype.kind == "f" and np.isfinite(samples).all()


async def test_sample_png_format_matches_array(client: httpx.AsyncClient) -> None:
    request = {"model": "digits", "n": 2, "seed": 11}
    as_array = np.array((await client.post("/sample", json=request)).json()["samples"])
    body = (await client.post("/sample", json={**request, "format": "png"})).json()
    assert body["model"] == "digits" and len(body["images"]) == 2
    for index, text in enumerate(body["images"]):
        image = Image.open(io.BytesIO(base64.b64decode(text)))
        assert image.format == "PNG" and image.mode == "L" and image.size == (8, 8)
        assert (np.asarray(image) == as_array[index, 0]).all()


async def test_sample_is_reproducible_with_a_seed(client: httpx.AsyncClient) -> None:
    request = {"model": "moons", "n": 4, "seed": 123, "temperature": 1.3}
    first = (await client.post("/sample", json=request)).json()
    second = (await client.post("/sample", json=request)).json()
    other = (await client.post("/sample", json={**request, "seed": 124})).json()
    assert first == second
    assert first["samples"] != other["samples"]


async def test_temperature_scales_the_latent(client: httpx.AsyncClient) -> None:
    # decode(T z) with the same z: encoding the samples back must give latents proportional to T.
    cold = (await client.post("/sample", json={"model": "moons", "n": 3, "seed": 5, "temperature": 0.5})).json()
    hot = (await client.post("/sample", json={"model": "moons", "n": 3, "seed": 5, "temperature": 1.0})).json()
    z_cold = np.array(
        (await client.post("/encode", json={"model": "moons", "inputs": cold["samples"]})).json()["latents"]
    )
    z_hot = np.array(
        (await client.post("/encode", json={"model": "moons", "inputs": hot["samples"]})).json()["latents"]
    )
    np.testing.assert_allclose(2 * z_cold, z_hot, atol=1e-4)


async def test_sample_png_grid(client: httpx.AsyncClient) -> None:
    response = await client.get("/sample.png", params={"model": "digits", "n": 5, "seed": 2, "temperature": 0.5})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    grid = Image.open(io.BytesIO(response.content))
    columns = math.ceil(math.sqrt(5))
    rows = math.ceil(5 / columns)
    assert grid.size == (columns * 8 + (columns + 1) * 2, rows * 8 + (rows + 1) * 2)
    again = await client.get("/sample.png", params={"model": "digits", "n": 5, "seed": 2, "temperature": 0.5})
    assert again.content == response.content


async def test_log_likelihood_matches_the_module(client: httpx.AsyncClient) -> None:
    app = client.app  # type: ignore[attr-defined]
    runner = app.state.context.registry.models["digits"].runner
    pixels = digit_images(3)
    response = await client.post("/log-likelihood", json={"model": "digits", "inputs": pixels[:, None].tolist()})
    assert response.status_code == 200
    body = response.json()
    x = torch.tensor(pixels[:, None], dtype=torch.float32, device=runner.device)  # where the module is (CUDA or CPU)
    expected = runner.module.log_prob(x).cpu().double()
    np.testing.assert_allclose(body["log_likelihood"], expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(body["bits_per_dim"], -expected.numpy() / (64 * math.log(2)), rtol=1e-5)


async def test_log_likelihood_from_json_images_and_multipart_agree(client: httpx.AsyncClient) -> None:
    pixels = digit_images(2, seed=4)
    from_inputs = (
        await client.post("/log-likelihood", json={"inputs": pixels[:, None].tolist(), "model": "digits"})
    ).json()
    from_images = (
        await client.post("/log-likelihood", json={"model": "digits", "images": [png_b64(p) for p in pixels]})
    ).json()
    files = [("files", (f"d{i}.png", base64.b64decode(png_b64(p)), "image/png")) for i, p in enumerate(pixels)]
    from_files = (await client.post("/log-likelihood", data={"model": "digits"}, files=files)).json()
    assert from_inputs == from_images == from_files


async def test_jpeg_is_accepted(client: httpx.AsyncClient) -> None:
    # Not symmetric, so a transposed or flipped decode would score differently.
    ramp = (np.arange(64).reshape(8, 8) * 4 + np.arange(8)[:, None] * 3).astype(np.uint8)
    jpeg = png_b64(ramp, fmt="JPEG")
    response = await client.post("/log-likelihood", json={"model": "digits", "images": [jpeg]})
    assert response.status_code == 200, response.text
    # Scored as the pixels the JPEG decodes to (lossy: not exactly the ramp), as if they were sent as numbers.
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(jpeg))).convert("L"))
    assert not (decoded == ramp).all() and np.abs(decoded.astype(int) - ramp).max() < 20
    as_inputs = await client.post("/log-likelihood", json={"model": "digits", "inputs": [decoded[None].tolist()]})
    assert response.json()["log_likelihood"] == as_inputs.json()["log_likelihood"]
    transposed = await client.post("/log-likelihood", json={"model": "digits", "inputs": [decoded.T[None].tolist()]})
    assert transposed.json()["log_likelihood"] != response.json()["log_likelihood"]


async def test_encode_is_consistent_with_log_likelihood(client: httpx.AsyncClient) -> None:
    pixels = digit_images(2, seed=9)[:, None].tolist()
    encoded = (await client.post("/encode", json={"model": "digits", "inputs": pixels})).json()
    scored = (await client.post("/log-likelihood", json={"model": "digits", "inputs": pixels})).json()
    z = np.array(encoded["latents"], dtype=np.float64)
    assert z.shape == (2, 64) and len(encoded["log_det"]) == 2
    derived = -0.5 * (z**2).sum(1) - 32 * math.log(2 * math.pi) + np.array(encoded["log_det"])
    np.testing.assert_allclose(derived, scored["log_likelihood"], rtol=1e-6)


async def test_decode_inverts_encode(client: httpx.AsyncClient) -> None:
    pixels = digit_images(3, seed=1)[:, None]
    latents = (await client.post("/encode", json={"model": "digits", "inputs": pixels.tolist()})).json()["latents"]
    decoded = (await client.post("/decode", json={"model": "digits", "latents": latents})).json()
    assert decoded["shape"] == [3, 1, 8, 8]
    assert (np.array(decoded["samples"]) == pixels).all()  # bin centres floor back to the exact pixels
    as_png = (await client.post("/decode", json={"model": "digits", "latents": latents, "format": "png"})).json()
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(as_png["images"][0]))))
    assert (first == pixels[0, 0]).all()


async def test_vector_round_trip(client: httpx.AsyncClient) -> None:
    points = [[0.25, -0.5], [1.5, 0.75]]
    latents = (await client.post("/encode", json={"model": "moons", "inputs": points})).json()["latents"]
    decoded = (await client.post("/decode", json={"model": "moons", "latents": latents})).json()
    np.testing.assert_allclose(decoded["samples"], points, atol=1e-5)


@pytest.mark.parametrize("method", ["linear", "slerp"])
async def test_interpolate_path_starts_and_ends_at_the_inputs(client: httpx.AsyncClient, method: str) -> None:
    pixels = digit_images(2, seed=2)
    request = {"model": "digits", "images": [png_b64(p) for p in pixels], "steps": 5, "method": method}
    body = (await client.post("/interpolate", json=request)).json()
    frames = np.array(body["samples"])
    assert body["shape"] == [5, 1, 8, 8]
    assert (frames[0, 0] == pixels[0]).all() and (frames[-1, 0] == pixels[1]).all()
    pngs = (await client.post("/interpolate", json={**request, "format": "png"})).json()["images"]
    assert len(pngs) == 5


async def test_interpolate_linear_is_linear_in_latent_space(client: httpx.AsyncClient) -> None:
    points = [[0.0, 0.5], [1.0, -0.5]]
    body = (await client.post("/interpolate", json={"model": "moons", "inputs": points, "steps": 3})).json()
    z = np.array((await client.post("/encode", json={"model": "moons", "inputs": body["samples"]})).json()["latents"])
    np.testing.assert_allclose(z[1], (z[0] + z[2]) / 2, atol=1e-4)


async def test_interpolate_manifold_grid(client: httpx.AsyncClient) -> None:
    corners = [[0.1, 0.2], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
    request = {"model": "moons", "inputs": corners, "steps": 4, "method": "manifold"}
    body = (await client.post("/interpolate", json=request)).json()
    grid = np.array(body["samples"])
    assert body["shape"] == [4, 4, 2]
    # eq. 19 at (φ, φ′) = (0, 0), (0, π/2), (π/2, 0), (π/2, π/2) gives z1, z2, z3, z4.
    for (row, column), corner in zip([(0, 0), (0, 3), (3, 0), (3, 3)], corners, strict=True):
        np.testing.assert_allclose(grid[row, column], corner, atol=1e-4)
    images = (
        await client.post(
            "/interpolate",
            json={
                "model": "digits",
                "images": [png_b64(p) for p in digit_images(4)],
                "steps": 3,
                "method": "manifold",
                "format": "png",
            },
        )
    ).json()["images"]
    assert len(images) == 9


async def test_model_may_be_omitted_with_a_default(open_client) -> None:
    async with open_client(DEFAULT_MODEL="moons") as client:
        body = (await client.post("/sample", json={"n": 1, "seed": 0})).json()
        assert body["model"] == "moons"
        assert (await client.get("/models")).json()["default_model"] == "moons"


async def test_model_may_be_omitted_with_one_model(open_client, store) -> None:
    single = store.parent / "single_store"
    if not single.exists():
        single.mkdir()
        shutil.copytree(store / "moons", single / "moons")  # a link would point out of MODEL_DIR: refused
    async with open_client(model_dir=single) as client:
        assert (await client.post("/encode", json={"inputs": [[0.0, 0.0]]})).json()["model"] == "moons"
        assert (await client.get("/sample.png", params={"n": 1})).status_code == 422  # vector model: no PNG


async def test_openapi_documents_every_endpoint_with_examples(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    expected = {
        ("post", "/sample"),
        ("get", "/sample.png"),
        ("post", "/log-likelihood"),
        ("post", "/encode"),
        ("post", "/decode"),
        ("post", "/interpolate"),
        ("get", "/models"),
        ("get", "/models/{name}"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    }
    found = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert expected <= found
    text = str(spec)
    schemas = spec["components"]["schemas"]
    for method, path in expected:
        operation = str(spec["paths"][path][method])
        referenced = re.findall(r"#/components/schemas/(\w+)", operation)
        documented = operation + "".join(str(schemas[name]) for name in referenced)
        assert "'example" in documented, (method, path)  # 'example' or 'examples' keys
    assert "multipart/form-data" in str(spec["paths"]["/log-likelihood"]["post"]["requestBody"])
    assert "HTTPBearer" not in text  # no API_KEY: no security scheme
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_bundled_models_are_served() -> None:
    from service.core.config import BUNDLED_MODEL_DIR
    from tests.support.inprocess import serve_in_process

    if not BUNDLED_MODEL_DIR.is_dir() or not any(p.is_dir() for p in BUNDLED_MODEL_DIR.iterdir()):
        pytest.skip("no bundled models in model_store/ yet")
    async with serve_in_process(BUNDLED_MODEL_DIR) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        for card in (await client.get("/models")).json()["models"]:
            response = await client.post("/sample", json={"model": card["name"], "n": 2, "seed": 0})
            assert response.status_code == 200 and response.json()["shape"] == [2, *card["shape"]]
