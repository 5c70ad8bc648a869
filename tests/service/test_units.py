"""Settings, image codec and latent-space geometry, without HTTP."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from service.codec import decode_image, tile_grid, to_uint8
from service.config import BUNDLED_MODEL_DIR, Settings
from service.errors import InvalidInputError
from service.interpolation import linear_path, manifold_grid, slerp_path

ENV_NAMES = [
    "MODEL_DIR",
    "DEFAULT_MODEL",
    "DEVICE",
    "MAX_BATCH_SIZE",
    "MAX_WAIT_MS",
    "MAX_QUEUE",
    "MAX_SAMPLES",
    "MAX_BODY_BYTES",
    "REQUEST_TIMEOUT_S",
    "API_KEY",
    "LOG_LEVEL",
    "HOST",
    "PORT",
    "TORCH_THREADS",
]


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_dir == BUNDLED_MODEL_DIR and BUNDLED_MODEL_DIR.name == "model_store"
    assert (settings.default_model, settings.device, settings.api_key) == (None, "auto", None)
    assert (settings.max_batch_size, settings.max_wait_ms, settings.max_queue, settings.max_samples) == (
        64,
        0.0,
        1024,
        256,
    )
    assert (settings.max_body_bytes, settings.request_timeout_s) == (10 * 1024 * 1024, 30.0)
    assert (settings.log_level, settings.host, settings.port, settings.torch_threads) == ("info", "127.0.0.1", 8000, 0)


def test_settings_read_the_documented_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "MODEL_DIR": "/srv/models",
        "DEFAULT_MODEL": "mnist",
        "DEVICE": "cpu",
        "MAX_BATCH_SIZE": "8",
        "MAX_WAIT_MS": "2.5",
        "MAX_QUEUE": "300",
        "MAX_SAMPLES": "300",
        "MAX_BODY_BYTES": "1000",
        "REQUEST_TIMEOUT_S": "1.5",
        "TORCH_THREADS": "1",
        "API_KEY": "abc",
        "LOG_LEVEL": "DEBUG",
        "HOST": "0.0.0.0",
        "PORT": "9000",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.model_dir == Path("/srv/models") and settings.default_model == "mnist"
    assert settings.device == "cpu" and settings.max_batch_size == 8 and settings.max_wait_ms == 2.5
    assert settings.max_queue == 300 and settings.max_samples == 300 and settings.max_body_bytes == 1000
    assert settings.request_timeout_s == 1.5 and settings.api_key is not None
    assert settings.api_key.get_secret_value() == "abc" and "abc" not in repr(settings)
    assert settings.log_level == "debug" and settings.host == "0.0.0.0" and settings.port == 9000
    assert settings.torch_threads == 1


def test_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEY", "MAX_BATCH_SIZE", "DEFAULT_MODEL"):  # empty (as compose passes unset ones) = default
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.api_key is None and settings.max_batch_size == 64 and settings.default_model is None
    with pytest.raises(ValidationError, match="MAX_QUEUE >= MAX_SAMPLES"):
        Settings(max_queue=10, max_samples=20)
    with pytest.raises(ValidationError):
        Settings(max_batch_size=0)
    with pytest.raises(ValidationError):
        Settings(log_level="loud")


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_decode_image_grayscale_and_rgb() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    tensor = decode_image(encoded(gray), (1, 3, 4), "x")
    assert tensor.shape == (1, 3, 4) and tensor.dtype == torch.float32
    assert (tensor[0].numpy() == gray).all()
    rgb = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    tensor = decode_image(encoded(rgb), (3, 3, 4), "x")
    assert (tensor.permute(1, 2, 0).numpy() == rgb).all()
    with pytest.raises(InvalidInputError, match="expected mode 8-bit RGB, got mode L"):
        decode_image(encoded(gray), (3, 3, 4), "x")


def test_to_uint8_floors_and_clamps() -> None:
    x = torch.tensor([-3.0, 0.2, 0.99, 1.0, 254.7, 255.99, 300.0, float("inf"), float("-inf")])
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 254, 255, 255, 255, 0]


def test_tile_grid() -> None:
    images = torch.stack([torch.full((1, 2, 3), i + 1, dtype=torch.uint8) for i in range(5)])
    grid = tile_grid(images, padding=1)
    assert grid.shape == (1, 2 * 2 + 3, 3 * 3 + 4)  # 3 columns, 2 rows
    assert grid[0, 1, 1].item() == 1 and grid[0, 4, 5].item() == 5 and grid[0, 0, 0].item() == 0


def test_linear_and_slerp_paths() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    line = linear_path(a, b, 5)
    assert torch.allclose(line[0], a) and torch.allclose(line[-1], b) and torch.allclose(line[2], (a + b) / 2)
    arc = slerp_path(a, b, 3)
    assert torch.allclose(arc[0], a) and torch.allclose(arc[-1], b, atol=1e-6)
    assert torch.allclose(arc[1], torch.tensor([math.cos(math.pi / 4), 2 * math.sin(math.pi / 4)]), atol=1e-6)
    parallel = slerp_path(a, 3 * a, 3)
    assert torch.allclose(parallel[1], 2 * a)  # falls back to linear


def test_manifold_grid_follows_eq_19() -> None:
    corners = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    steps = 5
    grid = manifold_grid(corners, steps)
    assert grid.shape == (steps, steps, 6)
    for (row, column), index in zip([(0, 0), (0, -1), (-1, 0), (-1, -1)], range(4), strict=True):
        assert torch.allclose(grid[row, column], corners[index], atol=1e-6)
    phi, phi_prime = math.pi / 2 * 1 / 4, math.pi / 2 * 3 / 4  # row 1, column 3
    z1, z2, z3, z4 = corners
    expected = math.cos(phi) * (math.cos(phi_prime) * z1 + math.sin(phi_prime) * z2) + math.sin(phi) * (
        math.cos(phi_prime) * z3 + math.sin(phi_prime) * z4
    )
    assert torch.allclose(grid[1, 3], expected, atol=1e-6)


def test_device_setting() -> None:
    from service.runner import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="expected an available device"):
            resolve_device("cuda")
