"""Every client error maps to its status with an "expected X, got Y" body; no input produces a 500."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.support.helpers import digit_images, png_b64

pytestmark = pytest.mark.anyio

GOOD_DIGIT = digit_images(1)[:, None].tolist()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb), with a tiny compressed payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


async def expect(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail, detail


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"model": "digits", "n": 0}, ["n", "expected", "greater than or equal to 1", "got 0"]),
        ({"model": "digits", "temperature": 0}, ["temperature", "expected", "got 0"]),
        ({"model": "digits", "temperature": 2.5}, ["temperature", "less than or equal to 2", "got 2.5"]),
        ({"model": "digits", "n": "3"}, ["n", "expected a valid integer", "got '3'"]),
        ({"model": "digits", "n": 1.5}, ["n", "expected", "got 1.5"]),
        ({"model": "digits", "seed": -1}, ["seed", "got -1"]),
        ({"model": "digits", "format": "gif"}, ["format", "'array' or 'png'", "got 'gif'"]),
        ({"model": "digits", "nn": 3}, ["nn", "expected no such field"]),
        ({"model": 3}, ["model", "expected a valid string", "got 3"]),
        ({"model": "moons", "format": "png"}, ["expected an image model", "vector"]),
    ],
)
async def test_sample_422(client: httpx.AsyncClient, body: dict, fragments: list[str]) -> None:
    await expect(await client.post("/sample", json=body), 422, *fragments)


async def test_unknown_model_404(client: httpx.AsyncClient) -> None:
    await expect(
        await client.post("/sample", json={"model": "cifar"}), 404, "expected one of ['digits', 'moons']", "'cifar'"
    )
    await expect(await client.get("/models/cifar"), 404, "'cifar'")
    await expect(await client.post("/encode", json={"model": "cifar", "inputs": [[0, 0]]}), 404, "'cifar'")


async def test_missing_model_with_several_models_422(client: httpx.AsyncClient) -> None:
    await expect(await client.post("/sample", json={"n": 1}), 422, "model", "no DEFAULT_MODEL", "got none")


async def test_n_and_items_over_limits_413(open_client) -> None:
    async with open_client(MAX_SAMPLES=4, MAX_QUEUE=8) as client:
        await expect(await client.post("/sample", json={"model": "moons", "n": 5}), 413, "MAX_SAMPLES = 4", "got 5")
        await expect(await client.get("/sample.png", params={"model": "digits", "n": 5}), 413, "got 5")
        await expect(
            await client.post("/log-likelihood", json={"model": "moons", "inputs": [[0, 0]] * 5}),
            413,
            "inputs",
            "got 5",
        )
        await expect(
            await client.post("/decode", json={"model": "moons", "latents": [[0, 0]] * 5}), 413, "latents", "got 5"
        )
        images = [png_b64(p) for p in digit_images(5)]
        await expect(await client.post("/encode", json={"model": "digits", "images": images}), 413, "images", "got 5")
        files = [("files", (f"{i}.png", base64.b64decode(t), "image/png")) for i, t in enumerate(images)]
        await expect(await client.post("/encode", data={"model": "digits"}, files=files), 413, "files")
        await expect(
            await client.post(
                "/interpolate", json={"model": "moons", "inputs": [[0, 0]] * 4, "method": "manifold", "steps": 3}
            ),
            413,
            "steps x steps",
            "got 9",
        )
        await expect(
            await client.post("/interpolate", json={"model": "moons", "inputs": [[0, 0]] * 2, "steps": 5}),
            413,
            "steps",
            "got 5",
        )


async def test_body_over_limit_413(open_client) -> None:
    async with open_client(MAX_BODY_BYTES=2000) as client:
        big = {"model": "moons", "inputs": [[0.123456789, 0.123456789]] * 100}
        await expect(await client.post("/log-likelihood", json=big), 413, "MAX_BODY_BYTES = 2000", "got")

        async def chunks():  # no Content-Length: the limit is enforced on the streamed length
            payload = json.dumps(big).encode()
            for start in range(0, len(payload), 500):
                yield payload[start : start + 500]

        await expect(
            await client.post("/log-likelihood", content=chunks(), headers={"content-type": "application/json"}),
            413,
            "MAX_BODY_BYTES",
        )
        small = {"model": "moons", "inputs": [[0.1, 0.2]]}
        assert (await client.post("/log-likelihood", json=small)).status_code == 200


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ([[[[0] * 8] * 8]] * 0, ["inputs", "expected", "at least 1"]),
        ([[[0] * 8] * 8], ["expected shape [N, 1, 8, 8]", "got [1, 8, 8]"]),
        ([[[[0] * 7] * 8]], ["expected shape [N, 1, 8, 8]", "got [1, 1, 8, 7]"]),
        ([[[[0] * 8] * 7 + [[0] * 7]]], ["rectangular array"]),
        ([[[[300] + [0] * 7] * 8]], ["expected values in [0, 255]", "got 300"]),
        ([[[[-1] + [0] * 7] * 8]], ["expected values in [0, 255]", "got -1"]),
        ([[[[0.5] + [0] * 7] * 8]], ["expected integer 8-bit pixel values", "got 0.5"]),
        ([[[["a"] + [0] * 7] * 8]], ["of numbers", "got 'a'"]),
        ([[[[True] + [0] * 7] * 8]], ["of numbers", "got True"]),
        ([[[[None] + [0] * 7] * 8]], ["of numbers", "got None"]),
        ("not a list", ["inputs", "expected a valid array", "got 'not a list'"]),
    ],
)
async def test_bad_image_inputs_422(client: httpx.AsyncClient, inputs: object, fragments: list[str]) -> None:
    await expect(await client.post("/log-likelihood", json={"model": "digits", "inputs": inputs}), 422, *fragments)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_inputs_422(client: httpx.AsyncClient, token: str) -> None:
    raw = '{"model": "moons", "inputs": [[0.0, TOKEN]]}'.replace("TOKEN", token)
    response = await client.post("/encode", content=raw, headers={"content-type": "application/json"})
    await expect(response, 422, "expected finite numbers")
    raw = '{"model": "moons", "latents": [[0.0, TOKEN]]}'.replace("TOKEN", token)
    response = await client.post("/decode", content=raw, headers={"content-type": "application/json"})
    await expect(response, 422, "expected finite numbers")


async def test_latents_422(client: httpx.AsyncClient) -> None:
    await expect(
        await client.post("/decode", json={"model": "moons", "latents": [[0, 0, 0]]}),
        422,
        "expected shape [N, 2]",
        "got [1, 3]",
    )
    await expect(await client.post("/decode", json={"model": "moons", "latents": [[1e39, 0]]}), 422, "float32")
    await expect(await client.post("/decode", json={"model": "moons", "latents": []}), 422, "latents")
    await expect(await client.post("/decode", json={"model": "moons", "latents": [["x", 0]]}), 422, "latents")


async def test_outputs_never_contain_non_finite_values(client: httpx.AsyncClient) -> None:
    digit_statuses = []
    for latent in ([3e38, -3e38], [1e30, 1e30], [1e6, -1e6]):
        response = await client.post("/decode", json={"model": "moons", "latents": [latent]})
        assert response.status_code in (200, 422), response.text
        if response.status_code == 200:
            assert np.isfinite(np.array(response.json()["samples"])).all()
        else:
            assert "non-finite" in response.json()["detail"]
        response = await client.post("/decode", json={"model": "digits", "latents": [[latent[0]] * 64]})
        digit_statuses.append(response.status_code)
        if response.status_code == 200:  # 8-bit pixels, however far out the latent
            body = response.json()
            pixels = np.array(body["samples"])
            assert body["shape"] == [1, 1, 8, 8] and pixels.shape == (1, 1, 8, 8) and pixels.dtype.kind == "i"
            assert pixels.min() >= 0 and pixels.max() <= 255
        else:
            await expect(response, 422, "expected latents whose decoding is finite", "non-finite outputs for items [0]")
    assert digit_statuses == [422, 200, 200]  # both answers were checked: overflow to inf, and saturation
    far = await client.post("/log-likelihood", json={"model": "moons", "inputs": [[3e38, -3e38]]})
    assert far.status_code in (200, 422), far.text
    assert "NaN" not in far.text and "Infinity" not in far.text


async def test_bad_images_422(client: httpx.AsyncClient) -> None:
    async def post(images: list[str], *fragments: str) -> None:
        await expect(await client.post("/log-likelihood", json={"model": "digits", "images": images}), 422, *fragments)

    await post(["not base64!!"], "images[0]", "undecodable base64")
    await post([base64.b64encode(b"hello, not an image").decode()], "images[0]", "expected a PNG or JPEG")
    await post([png_b64(np.zeros((9, 8), np.uint8))], "expected a 8x8 image", "got 8x9")
    await post(
        [png_b64(np.zeros((8, 8, 3), np.uint8), mode="RGB")], "expected mode 8-bit grayscale (L)", "got mode RGB"
    )
    await post(
        [png_b64(np.zeros((8, 8), np.uint8)), png_b64(np.zeros((8, 8), np.uint8), mode="1")], "images[1]", "got mode 1"
    )
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="GIF")
    await post([base64.b64encode(buffer.getvalue()).decode()], "expected a PNG or JPEG")
    whole = base64.b64decode(png_b64(digit_images(1)[0]))
    truncated = whole[: len(whole) // 2]
    await post([base64.b64encode(truncated).decode()], "images[0]")
    bomb = base64.b64encode(huge_png_header(100_000, 100_000)).decode()
    await post([bomb], "expected a 8x8 image", "decompression bomb")
    large = base64.b64encode(huge_png_header(5000, 4000)).decode()
    await post([large], "expected a 8x8 image", "got 5000x4000")
    await expect(
        await client.post("/log-likelihood", json={"model": "moons", "images": [png_b64(np.zeros((8, 8)))]}),
        422,
        "expected an image model",
    )
    await expect(
        await client.post("/log-likelihood", json={"model": "digits"}),
        422,
        "exactly one of 'inputs' or 'images'",
        "neither",
    )
    await expect(
        await client.post("/log-likelihood", json={"model": "digits", "inputs": GOOD_DIGIT, "images": ["x"]}),
        422,
        "exactly one of",
    )


async def test_bad_multipart_422(client: httpx.AsyncClient) -> None:
    await expect(
        await client.post("/encode", data={"model": "digits"}, files=[("files", ("a.png", b"nope", "image/png"))]),
        422,
        "file 'a.png'",
    )
    response = await client.post(
        "/encode", content=b"--xyz\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert response.status_code == 422, response.text
    only_model = b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\ndigits\r\n--xyz--\r\n'
    response = await client.post(
        "/encode", content=only_model, headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    await expect(response, 422, "expected at least one image file")


async def test_malformed_json_422(client: httpx.AsyncClient) -> None:
    for raw in (b"{", b"", b"[1, 2]", b'"text"'):
        response = await client.post("/log-likelihood", content=raw, headers={"content-type": "application/json"})
        await expect(response, 422, "expected")
        response = await client.post("/sample", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text


async def test_interpolate_422(client: httpx.AsyncClient) -> None:
    two = [[0, 0], [1, 1]]
    await expect(
        await client.post("/interpolate", json={"model": "moons", "inputs": two, "method": "manifold"}),
        422,
        "expected 4 items",
        "got 2",
    )
    await expect(
        await client.post("/interpolate", json={"model": "moons", "inputs": two * 2}), 422, "expected 2 items", "got 4"
    )
    await expect(await client.post("/interpolate", json={"model": "moons", "inputs": two, "steps": 1}), 422, "steps")
    await expect(await client.post("/interpolate", json={"model": "moons", "inputs": two, "steps": 65}), 422, "steps")
    await expect(
        await client.post("/interpolate", json={"model": "moons", "inputs": two, "method": "cubic"}), 422, "method"
    )


async def test_sample_png_query_422(client: httpx.AsyncClient) -> None:
    await expect(await client.get("/sample.png", params={"model": "digits", "temperature": "hot"}), 422, "temperature")
    await expect(await client.get("/sample.png", params={"model": "moons"}), 422, "expected an image model")


async def test_unknown_path_and_method(client: httpx.AsyncClient) -> None:
    await expect(await client.get("/nope"), 404, "got /nope")
    await expect(await client.get("/sample"), 405, "got GET")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    ["model", "n", "temperature", "seed", "format", "inputs", "images", "latents", "steps", "method"]
)
BODIES = st.dictionaries(
    FIELDS, JSON_VALUES | st.sampled_from(["digits", "moons", "png", "slerp", "manifold"]), max_size=6
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/sample", "/log-likelihood", "/encode", "/decode", "/interpolate"]),
    body=BODIES,
)
async def test_no_client_input_produces_a_500(client: httpx.AsyncClient, path: str, body: dict) -> None:
    raw = json.dumps(body)  # Python's encoder writes Infinity/NaN tokens too
    response = await client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, (path, body, response.text)

    def refuse(token: str) -> None:
        raise AssertionError(f"response contains {token}: {response.text}")

    json.loads(response.text, parse_constant=refuse)
