"""Hand-written hostile requests: each gets a 4xx whose detail says why, and the service keeps serving.

In-process (httpx.ASGITransport). Bodies of 100 MB against a real server are in test_server_faults.py.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.artifacts import vector_flow, write_artifact
from tests.support.inprocess import serve_in_process

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
JSON_ENDPOINTS = ("/sample", "/decode", "/interpolate", "/log-likelihood", "/encode", "/anomaly")
SCORING_ENDPOINTS = ("/log-likelihood", "/encode", "/anomaly")


@pytest.fixture(scope="module")
async def client(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_in_process(store, max_batch_size=8, torch_threads=1, max_body_bytes=1_000_000) as served:
        yield served


async def expect(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.request.url, response.text[:300])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "expected" in detail, detail
    for fragment in fragments:
        assert fragment in detail, (fragment, detail)
    assert len(detail) < 1000, "an error body never echoes a whole hostile input"
    return detail


# ------------------------------------------------------------------------------------------------ images
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(width: int = 8, height: int = 8, *, idat: bytes | None = None, extra: bytes = b"") -> bytes:
    """A hand-made grayscale PNG: any declared size, any IDAT, extra chunks before it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = idat if idat is not None else zlib.compress(b"\0" * min(height * (width + 1), 1 << 16))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares ``width x height``."""
    data = bytearray(encoded(Image.new("L", (8, 8)), "JPEG"))
    at = data.find(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def zlib_bomb(mebibytes: int) -> bytes:
    """``mebibytes`` MiB of zeros, deflated (about 1 KB per MiB), built without holding them in memory."""
    compressor = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(mebibytes)) + compressor.flush()


ZLIB_BOMB = zlib_bomb(256)
GOOD_PNG = encoded(Image.fromarray(np.full((8, 8), 7, np.uint8)))
HOSTILE_IMAGES = {
    "decompression bomb (PNG 100000x100000)": (png_file(100_000, 100_000), ["decompression bomb"]),
    "decompression bomb (PNG 2^31-1 square)": (png_file(2**31 - 1, 2**31 - 1), ["decompression bomb"]),
    "decompression bomb (JPEG 65000x65000)": (jpeg_declaring(65_000, 65_000), ["decompression bomb"]),
    "large but not a bomb (PNG 5000x4000)": (png_file(5000, 4000), ["expected a 8x8 image", "got 5000x4000"]),
    "zTXt text bomb": (png_file(extra=_chunk(b"zTXt", b"k\0\0" + ZLIB_BOMB)), ["undecodable", "too large"]),
    "iCCP profile bomb": (png_file(extra=_chunk(b"iCCP", b"p\0\0" + ZLIB_BOMB)), ["undecodable", "too large"]),
    "16-bit grayscale PNG": (encoded(Image.fromarray(np.zeros((8, 8), np.uint16))), ["got mode I;16"]),
    "palette PNG": (encoded(Image.new("P", (8, 8))), ["expected mode 8-bit grayscale (L)", "got mode P"]),
    "grayscale + alpha PNG": (encoded(Image.new("LA", (8, 8))), ["got mode LA"]),
    "1-bit PNG": (encoded(Image.new("1", (8, 8))), ["got mode 1"]),
    "CMYK JPEG": (encoded(Image.new("CMYK", (8, 8)), "JPEG"), ["got mode CMYK"]),
    "truncated PNG (header only)": (GOOD_PNG[:40], ["expected a PNG or JPEG image"]),
    "truncated PNG (half)": (GOOD_PNG[: len(GOOD_PNG) // 2], ["expected a PNG or JPEG image"]),
    "PNG of size 0x0": (png_file(0, 0), ["expected a PNG or JPEG image"]),
    "GIF": (encoded(Image.new("L", (8, 8)), "GIF"), ["expected a PNG or JPEG image"]),
    "not an image": (b"MZ\x90\x00" + bytes(200), ["expected a PNG or JPEG image"]),
}


@pytest.mark.parametrize("name", list(HOSTILE_IMAGES))
async def test_hostile_images_are_refused_with_the_reason(client: httpx.AsyncClient, name: str) -> None:
    data, fragments = HOSTILE_IMAGES[name]
    as_json = {"model": "digits", "images": [base64.b64encode(GOOD_PNG).decode(), base64.b64encode(data).decode()]}
    for path in SCORING_ENDPOINTS:
        await expect(await client.post(path, json=as_json), 422, "images[1]", *fragments)
        files = [("files", ("good.png", GOOD_PNG, "image/png")), ("files", ("evil.png", data, "image/png"))]
        response = await client.post(path, data={"model": "digits"}, files=files)
        await expect(response, 422, "file 'evil.png'", *fragments)
    assert (await client.post("/encode", json={"model": "digits", "images": [as_json["images"][0]]})).status_code == 200


async def test_an_idat_bomb_of_the_right_size_is_decoded_in_bounded_time(client: httpx.AsyncClient) -> None:
    # 256 MiB of deflated zeros behind an 8x8 header: the decoder stops once 8x8 pixels are read.
    bomb = base64.b64encode(png_file(idat=ZLIB_BOMB)).decode()
    started = time.perf_counter()
    response = await client.post("/log-likelihood", json={"model": "digits", "images": [bomb]})
    assert response.status_code == 200 and time.perf_counter() - started < 2.0, response.text[:200]


# ------------------------------------------------------------------------------------- bodies and content types
async def test_deeply_nested_json_is_refused(client: httpx.AsyncClient) -> None:
    for depth in (200, 5_000, 100_000):
        nested = "[" * depth + "0" + "]" * depth
        for path in JSON_ENDPOINTS:
            field = "latents" if path == "/decode" else "inputs"
            body = f'{{"model": "moons", "{field}": {nested}}}'
            response = await client.post(path, content=body, headers=JSON)
            assert response.status_code == 422, (path, depth, response.text[:200])
            assert "expected" in response.json()["detail"]
        whole = await client.post("/sample", content=nested, headers=JSON)
        await expect(whole, 422)


async def test_unparseable_json_bodies_say_why(client: httpx.AsyncClient) -> None:
    cases = {
        b"\x80\x81\x82{": "cannot be parsed",  # not UTF-8
        b'{"model": "moons", "n": 1' + b"0" * 5000 + b"}": "cannot be parsed",  # an integer of 5001 digits
        b'{"model": "moons", "n": 1e400}': "n",  # a float JSON cannot hold
        b'{"model": "moons"': "invalid JSON",
        b"": "",
    }
    for raw, fragment in cases.items():
        for path in ("/sample", "/decode"):
            await expect(await client.post(path, content=raw, headers=JSON), 422, fragment)
    for raw in cases:
        await expect(await client.post("/log-likelihood", content=raw, headers=JSON), 422)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "image/png", "application/xml", "multipart/mixed"],
)
async def test_wrong_content_types_are_refused(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"model": "moons", "inputs": [[0.5, 0.5], [0.1, 0.2]]}'
    for path in ("/log-likelihood", "/encode", "/anomaly"):
        await expect(await client.post(path, content=body, headers=headers), 422, "content-type")
        assert (await client.post(path, content=body, headers=JSON)).status_code == 200
    for path, body in (
        ("/sample", b'{"model": "moons"}'),
        ("/decode", b'{"model": "moons", "latents": [[0, 0]]}'),
        ("/interpolate", b'{"model": "moons", "inputs": [[0, 0], [1, 1]]}'),
    ):
        await expect(await client.post(path, content=body, headers=headers), 422, "expected a JSON object")
        assert (await client.post(path, content=body, headers=JSON)).status_code == 200


async def test_unknown_fields_are_refused(client: httpx.AsyncClient) -> None:
    bodies = {
        "/sample": {"model": "moons", "n": 1, "evil": True},
        "/decode": {"model": "moons", "latents": [[0, 0]], "__proto__": {}},
        "/interpolate": {"model": "moons", "inputs": [[0, 0], [1, 1]], "stpes": 4},
        "/log-likelihood": {"model": "moons", "inputs": [[0, 0]], "input": [[0, 0]]},
        "/encode": {"model": "moons", "inputs": [[0, 0]], "format": "png"},
        "/anomaly": {"model": "moons", "inputs": [[0, 0]], "threshold": 3},
    }
    for path, body in bodies.items():
        unknown = next(key for key in body if key not in ("model", "n", "latents", "inputs"))
        await expect(await client.post(path, json=body), 422, unknown, "expected no such field")


async def test_huge_counts_are_refused_before_any_work(client: httpx.AsyncClient) -> None:
    await expect(await client.post("/sample", json={"model": "moons", "n": 10**30}), 413, "MAX_SAMPLES", "n")
    await expect(await client.get("/sample.png", params={"model": "digits", "n": 10**12}), 413, "MAX_SAMPLES")
    await expect(await client.post("/sample", json={"model": "moons", "n": 2**63}), 413, "MAX_SAMPLES")
    await expect(await client.post("/sample", json={"model": "moons", "seed": 2**64}), 422, "seed")
    two = [[0, 0], [1, 1]]
    await expect(
        await client.post("/interpolate", json={"model": "moons", "inputs": two, "steps": 10**9}), 422, "steps"
    )
    manifold = {"model": "moons", "inputs": two * 2, "steps": 64, "method": "manifold"}
    await expect(await client.post("/interpolate", json=manifold), 413, "steps x steps", "got 4096")
    many = {"model": "moons", "inputs": [[0.0, 0.0]] * 5000}
    for path in SCORING_ENDPOINTS:
        await expect(await client.post(path, json=many), 413, "MAX_SAMPLES = 256", "got 5000")
    await expect(await client.post("/decode", json={"model": "moons", "latents": [[0.0, 0.0]] * 5000}), 413, "got 5000")
    files = [("files", (f"{i}.png", GOOD_PNG, "image/png")) for i in range(300)]
    await expect(await client.post("/encode", data={"model": "digits"}, files=files), 413, "files", "MAX_SAMPLES")
    fields = {f"field{i}": "x" for i in range(100)}
    response = await client.post("/encode", data=fields, files=[("files", ("a.png", GOOD_PNG, "image/png"))])
    await expect(response, 422, "multipart")


async def test_bodies_over_the_limit_are_refused(client: httpx.AsyncClient) -> None:
    big = b'{"model": "moons", "inputs": [' + b"[0.5, 0.5]," * 200_000 + b"[0, 0]]}"  # 2.2 MB, limit 1 MB
    for path in JSON_ENDPOINTS:
        await expect(await client.post(path, content=big, headers=JSON), 413, "MAX_BODY_BYTES = 1000000")

        async def stream() -> AsyncIterator[bytes]:  # no Content-Length: refused once the count passes the limit
            for start in range(0, len(big), 65536):
                yield big[start : start + 65536]

        await expect(await client.post(path, content=stream(), headers=JSON), 413, "MAX_BODY_BYTES = 1000000")
    bad_length = {"content-type": "application/json", "content-length": "-5"}
    assert (await client.post("/sample", content=b"{}", headers=bad_length)).status_code in (400, 413, 422)


# ----------------------------------------------------------------------------------------------- model names
async def test_model_names_are_looked_up_never_used_as_paths(client: httpx.AsyncClient, store: Path) -> None:
    # A valid artifact right next to MODEL_DIR: reachable by a path, never by a model name.
    write_artifact(
        store.parent / "outside", vector_flow(), flow_type="NVPNet", data_kind="vector", shape=[2], value_range=None
    )
    names = [
        "../outside",
        "..",
        ".",
        "moons/../moons",
        "/etc/passwd",
        str(store / "moons"),
        "moons\x00",
        "..\\outside",
        "ｍｏｏｎｓ",
        "MOONS",
        "moons ",
        "%2e%2e%2foutside",
        "x" * 100_000,
    ]
    for name in names:
        for response in (
            await client.post("/sample", json={"model": name}),
            await client.post("/encode", json={"model": name, "inputs": [[0, 0]]}),
            await client.get("/sample.png", params={"model": name[:4000]}),
        ):
            await expect(response, 404, "expected one of ['digits', 'moons']")
    # Percent-encoded slashes make a path no route matches; anything else is looked up as a name, and misses.
    no_route, unknown = "expected one of the documented paths (see /docs)", "expected one of ['digits', 'moons']"
    for raw, reason in (
        ("..%2Foutside", no_route),
        ("%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", no_route),
        ("%2e%2e", unknown),
        ("moons%00", unknown),
        ("..%5Coutside", unknown),
        ("outside", unknown),
    ):
        response = await client.get(f"/models/{raw}")
        await expect(response, 404, reason)
        assert "flow_type" not in response.text, raw  # never the card of the artifact outside MODEL_DIR
    assert (await client.get("/models/moons")).status_code == 200
