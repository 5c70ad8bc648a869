"""The image codec: decoding uploads, 8-bit conversion, grids."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.core.errors import InvalidInputError
from service.engine.codec import decode_image, tile_grid, to_uint8


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


def test_undecodable_data_gets_the_same_message_every_time() -> None:
    """Pillow names its buffer by memory address; the client's error must not change from call to call."""
    messages = set()
    for _ in range(3):
        with pytest.raises(InvalidInputError) as refused:
            decode_image(b"not an image", (1, 8, 8), "files[0]")
        messages.add(refused.value.detail)
    assert len(messages) == 1 and "0x" not in messages.pop()
