"""Images in and out: base64 PNG/JPEG → 8-bit tensors checked against the card, tensors → PNG.

Pillow reads only the header before the size check, so an image whose declared size differs from the card's
(a decompression bomb included) is refused without decoding its pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import warnings

import numpy as np
import torch
from PIL import Image

from service.core.errors import InvalidInputError

ACCEPTED_FORMATS = ("PNG", "JPEG")
MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}
MODE_NAMES = {"L": "8-bit grayscale (L)", "RGB": "8-bit RGB"}
_OBJECT_ADDRESS = re.compile(r" object at 0x[0-9a-fA-F]+")
_DATA_URL = re.compile(r"^data:image/[a-zA-Z+.-]+;base64,")


def decode_base64(text: str, index: int) -> bytes:
    """Strict base64 (an optional ``data:image/...;base64,`` prefix is allowed) → bytes.

    Raises:
        InvalidInputError: the text is not valid base64.
    """
    payload = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(
            f"images[{index}]: expected base64-encoded PNG or JPEG, got undecodable base64 ({exc})"
        ) from exc


def decode_image(data: bytes, shape: tuple[int, int, int], label: str) -> torch.Tensor:
    """PNG/JPEG bytes → ``(C, H, W)`` float tensor of 8-bit intensities 0..255.

    Args:
        data: the encoded image.
        shape: the card's ``(C, H, W)``; the image must have this size and mode (L for C=1, RGB for C=3).
        label: how errors name the item (``images[2]``, ``file 'a.png'``).

    Raises:
        InvalidInputError: undecodable data, another format, another size or another mode.
    """
    channels, height, width = shape
    expected_mode = MODE_FOR_CHANNELS[channels]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidInputError(
            f"{label}: expected a {width}x{height} image (width x height), got a decompression bomb ({exc})"
        ) from exc
    except Exception as exc:  # Pillow raises many types for hostile headers (ValueError: zTXt/iCCP bombs, ...)
        reason = _OBJECT_ADDRESS.sub("", str(exc))  # Pillow names its buffer object by memory address
        raise InvalidInputError(f"{label}: expected a PNG or JPEG image, got undecodable data ({reason})") from exc
    with image:
        if image.size != (width, height):
            raise InvalidInputError(
                f"{label}: expected a {width}x{height} image (width x height), got {image.size[0]}x{image.size[1]}"
            )
        if image.mode != expected_mode:
            raise InvalidInputError(f"{label}: expected mode {MODE_NAMES[expected_mode]}, got mode {image.mode}")
        try:
            pixels = np.asarray(image, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidInputError(
                f"{label}: expected a PNG or JPEG image, got truncated or corrupt data ({exc})"
            ) from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Decoded intensities → 8-bit pixels: ``floor(clamp(x, 0, 255))`` (docs/artifact.md)."""
    return torch.floor(torch.clamp(x, 0.0, 255.0)).to(torch.uint8)


def encode_png(pixels: torch.Tensor) -> bytes:
    """One ``(C, H, W)`` uint8 image → PNG bytes."""
    array = pixels.permute(1, 2, 0).contiguous().numpy()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_png_base64(pixels: torch.Tensor) -> list[str]:
    """``(N, C, H, W)`` uint8 images → base64 PNG strings."""
    return [base64.b64encode(encode_png(item)).decode("ascii") for item in pixels]


def tile_grid(pixels: torch.Tensor, padding: int = 2) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 images → one ``(C, H', W')`` grid, ``ceil(sqrt(N))`` columns, black padding."""
    count, channels, height, width = pixels.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = torch.zeros(
        (channels, rows * height + (rows + 1) * padding, columns * width + (columns + 1) * padding),
        dtype=torch.uint8,
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[:, top : top + height, left : left + width] = pixels[index]
    return grid
