"""Fixtures of the bulk-scoring client tests: small generated sources and in-process apps to score them against."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from PIL import Image

from service.core.config import Settings
from service.main import create_app
from tests.support.anomaly_store import bar_images, moon_points
from tests.support.inprocess import wait_ready

CORRUPT_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # the signature, then nothing a decoder can read


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def digit_pngs() -> dict[str, bytes]:
    """Five 8x8 in-distribution PNGs of ``digits``, a corrupt PNG and one of the wrong size, by relative path."""
    images = bar_images(5, seed=40)
    files = {f"a/img{index}.png": png(image[0]) for index, image in enumerate(images[:3])}
    files.update({f"b/c/img{index}.png": png(image[0]) for index, image in enumerate(images[3:], start=3)})
    files["b/corrupt.png"] = CORRUPT_PNG
    files["b/large.png"] = png(np.zeros((16, 16)))
    return files


@pytest.fixture
def image_folder(tmp_path: Path, digit_pngs: dict[str, bytes]) -> Path:
    root = tmp_path / "images"
    for name, data in digit_pngs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not an image: not scored")
    return root


@pytest.fixture
def image_zip(tmp_path: Path, digit_pngs: dict[str, bytes]) -> Path:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in digit_pngs.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def image_tar(tmp_path: Path, digit_pngs: dict[str, bytes]) -> Path:
    path = tmp_path / "images.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in digit_pngs.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def digits_npz(tmp_path: Path) -> Path:
    path = tmp_path / "digits.npz"
    np.savez_compressed(path, x=bar_images(6, seed=41), labels=np.arange(6))
    return path


@pytest.fixture
def mixed_ndjson(tmp_path: Path, digit_pngs: dict[str, bytes]) -> Path:
    path = tmp_path / "items.ndjson"
    lines = [
        json.dumps({"id": "pixels", "inputs": bar_images(1, seed=42)[0].tolist()}),
        json.dumps({"id": "png", "image": base64.b64encode(digit_pngs["a/img0.png"]).decode()}),
        "{not json",
        json.dumps({"id": "neither", "label": 3}),
        json.dumps({"id": "bad64", "image": "***"}),
        "",
        json.dumps({"inputs": np.zeros((1, 8, 8), dtype=int).tolist()}),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def moons_npz(tmp_path: Path) -> Path:
    path = tmp_path / "moons.npz"
    np.savez(path, points=moon_points(9, seed=43))
    return path


@contextlib.asynccontextmanager
async def app_transport(model_dir: Path, **settings: Any) -> AsyncIterator[httpx.ASGITransport]:
    """An in-process app for ``Settings(model_dir=model_dir, **settings)``, ready, as a transport for the client."""
    app = create_app(Settings(model_dir=model_dir, torch_threads=1, **settings))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            assert (await wait_ready(client)).status_code == 200
        yield transport


@pytest.fixture(scope="module")
async def anomaly_transport(anomaly_store: Path) -> AsyncIterator[httpx.ASGITransport]:
    """The anomaly store served in-process (``digits`` by default)."""
    async with app_transport(anomaly_store, max_batch_size=16, default_model="digits") as transport:
        yield transport
