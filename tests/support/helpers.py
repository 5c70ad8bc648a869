"""Small helpers shared by the service tests."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image


def png_b64(pixels: np.ndarray, mode: str = "L", fmt: str = "PNG") -> str:
    """``(H, W)`` or ``(H, W, 3)`` uint8 array → base64 image."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def digit_images(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 8, 8)`` random 8-bit images for the ``digits`` model."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, 8, 8), dtype=np.uint8)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        match = re.match(r"^(\S+?)(\{(.*)\})? (\S+)$", line)
        assert match is not None, line
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(4))
    return total
