"""Readers for data brought by users: image folders, ``.npy``/``.npz`` arrays, CIFAR-10 batches, MNIST IDX.

Every reader returns whole arrays (``uint8`` images ``(N, C, H, W)`` or ``float32`` vectors ``(N, D)``) and
checks everything up front, so a bad file fails before training with a :class:`DataError` naming the file,
never mid-epoch.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """Data that cannot be used: a missing path, an empty folder, a corrupt file, mixed sizes."""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"data path '{path}' does not exist")
    return path


# --------------------------------------------------------------------------------------------- image folder
def read_image_folder(folder: Path, image_size: int = 0, crop: str = "center", channels: int = 0) -> np.ndarray:
    """Every PNG/JPEG under ``folder`` (recursively, sorted by path) as one array.

    Args:
        folder: the folder.
        image_size: resize every image to ``image_size × image_size`` (0 = keep sizes, which must then agree).
        crop: "center" crops the largest centred square before resizing; "none" resizes as is.
        channels: 1 (grayscale), 3 (RGB) or 0 to infer (1 when every image is grayscale, else 3).

    Returns:
        ``uint8`` array ``(N, C, H, W)``.

    Raises:
        DataError: missing or empty folder, an unreadable image, or mixed sizes without ``image_size``.
    """
    from PIL import Image, UnidentifiedImageError

    folder = _require(Path(folder))
    if not folder.is_dir():
        raise DataError(f"expected a folder of images at '{folder}', got a file")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no PNG/JPEG images found in '{folder}'")
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                img.load()
                images.append(img.copy())
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise DataError(f"cannot read image '{file}': {err}") from None
    if channels == 0:
        channels = 1 if all(img.mode in ("1", "L", "I;16", "I", "F") for img in images) else 3
    arrays = []
    first_size = None
    for file, img in zip(files, images, strict=True):
        img = img.convert("L" if channels == 1 else "RGB")
        if image_size:
            img = _resize(img, image_size, crop)
        elif first_size is None:
            first_size = (img.size, file)
        elif img.size != first_size[0]:
            (w0, h0), file0 = first_size
            raise DataError(
                f"image '{file}' is {img.size[0]}x{img.size[1]} but '{file0}' is {w0}x{h0}; "
                "set data.image_size to resize every image to one size"
            )
        array = np.asarray(img, dtype=np.uint8)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return np.stack(arrays)


def _resize(img: Any, size: int, crop: str) -> Any:
    from PIL import Image

    if crop == "center":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------- npy / npz
def read_array(path: Path, key: str = "", kind: str = "auto") -> tuple[np.ndarray, str]:
    """An array from ``.npy`` or ``.npz`` (``allow_pickle=False``: a file cannot run code).

    Images are integer arrays ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` (C in 1, 3) with values
    0..255; vectors are ``(N,)`` or ``(N, D)``. ``kind="auto"`` takes integer arrays of rank 3–4 as images.

    Args:
        path: the file.
        key: the array inside an ``.npz`` ("" = ``x`` if present, else the only array).
        kind: "auto", "image" or "vector".

    Returns:
        ``(array, kind)``: ``uint8 (N, C, H, W)`` with ``"image"`` or ``float32 (N, D)`` with ``"vector"``.

    Raises:
        DataError: unreadable file, missing key, or an array that fits neither kind.
    """
    path = _require(Path(path))
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"cannot read array file '{path}': {err}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.keys())
            if key:
                if key not in names:
                    raise DataError(f"no array '{key}' in '{path}' (it holds {', '.join(names) or 'nothing'})")
            elif "x" in names:
                key = "x"
            elif len(names) == 1:
                key = names[0]
            else:
                raise DataError(f"'{path}' holds several arrays ({', '.join(names)}); choose one with data.key")
            try:
                array = loaded[key]
            except (ValueError, OSError, EOFError) as err:
                raise DataError(f"cannot read array '{key}' of '{path}': {err}") from None
    else:
        array = loaded
    if array.size == 0:
        raise DataError(f"array in '{path}' is empty (shape {list(array.shape)})")
    is_int = np.issubdtype(array.dtype, np.integer)
    if kind == "auto":
        kind = "image" if is_int and array.ndim in (3, 4) else "vector"
    if kind == "vector":
        if array.ndim not in (1, 2) or not np.issubdtype(array.dtype, np.number):
            raise DataError(f"expected vectors of shape (N, D) in '{path}', got {list(array.shape)} {array.dtype}")
        vectors = array.reshape(len(array), -1).astype(np.float32)
        if not np.isfinite(vectors).all():
            raise DataError(f"array in '{path}' holds NaN or infinite values")
        return vectors, "vector"
    return _as_images(array, str(path)), "image"


def _as_images(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise DataError(
            f"expected images (N, H, W), (N, C, H, W) or (N, H, W, C) in '{where}', got {list(array.shape)}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.isnan(array).any():
        raise DataError(f"expected numeric pixel values in '{where}', got {array.dtype}")
    if array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.round(array)):
        raise DataError(
            f"expected integer pixel values 0..255 in '{where}', got values in [{array.min()}, {array.max()}]"
        )
    return np.ascontiguousarray(array.astype(np.uint8))


# ----------------------------------------------------------------------------------------------- CIFAR-10
class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, dicts, lists and bytes: a crafted file cannot run code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' from a data file")
        return super().find_class(module, name)


def _read_cifar_batch(data: bytes, where: str) -> np.ndarray:
    try:
        batch = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # any malformed pickle: report it with the file name
        raise DataError(f"cannot read CIFAR-10 batch '{where}': {err}") from None
    if not isinstance(batch, dict):
        raise DataError(f"expected a dict in CIFAR-10 batch '{where}', got {type(batch).__name__}")
    images = batch.get(b"data", batch.get("data"))
    if not isinstance(images, np.ndarray) or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        shape = list(images.shape) if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"expected 'data' of shape (N, 3072) in CIFAR-10 batch '{where}', got {shape}")
    return images.astype(np.uint8).reshape(-1, 3, 32, 32)


def read_cifar10(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """CIFAR-10 in its python-pickle batch format.

    ``path`` is a folder with ``data_batch_1..5`` and ``test_batch`` (any subset), a single batch file, or the
    ``cifar-10-python.tar.gz`` archive.

    Returns:
        ``(train, test)``: ``uint8 (N, 3, 32, 32)`` each; ``test`` is None when no ``test_batch`` was found.

    Raises:
        DataError: no batch found or a malformed batch.
    """
    path = _require(Path(path))
    blobs: dict[str, tuple[bytes, str]] = {}
    if path.is_dir():
        for file in sorted(path.rglob("*_batch*")):
            if file.is_file() and (file.name.startswith("data_batch_") or file.name == "test_batch"):
                blobs[file.name] = (file.read_bytes(), str(file))
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.isfile() and (name.startswith("data_batch_") or name == "test_batch"):
                    blobs[name] = (archive.extractfile(member).read(), f"{path}:{member.name}")
    else:
        blobs[path.name] = (path.read_bytes(), str(path))
    if not blobs:
        raise DataError(f"no CIFAR-10 batches (data_batch_N, test_batch) found in '{path}'")
    train = [_read_cifar_batch(data, where) for name, (data, where) in sorted(blobs.items()) if name != "test_batch"]
    test = _read_cifar_batch(*blobs["test_batch"]) if "test_batch" in blobs else None
    if not train:  # only a test batch: it becomes the pool that is split
        return test, None
    return np.concatenate(train), test


# ---------------------------------------------------------------------------------------------- MNIST IDX
def read_idx(file: Path) -> np.ndarray:
    """One IDX file of unsigned bytes (``.gz`` allowed), e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        ``uint8`` array of the shape the header gives, e.g. ``(N, 28, 28)``.

    Raises:
        DataError: a bad magic number, an unsupported element type or a truncated file.
    """
    file = _require(Path(file))
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file '{file}': {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"'{file}' is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(f"expected unsigned-byte data (type 0x08) in IDX file '{file}', got 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"IDX file '{file}' has a truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file '{file}' holds {len(raw) - header} bytes of data, expected {expected} "
            f"for shape {list(shape)} (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_mnist_idx(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """MNIST-format images in IDX.

    ``path`` is a single image file, or a folder with ``train-images-idx3-ubyte[.gz]`` and optionally
    ``t10k-images-idx3-ubyte[.gz]``.

    Returns:
        ``(train, test)``: ``uint8 (N, 1, H, W)``; ``test`` is None without a ``t10k`` file.

    Raises:
        DataError: missing files or a malformed IDX file.
    """
    path = _require(Path(path))

    def images(file: Path) -> np.ndarray:
        array = read_idx(file)
        if array.ndim != 3:
            raise DataError(f"expected images (N, H, W) in IDX file '{file}', got shape {list(array.shape)}")
        return array[:, None]

    if path.is_file():
        return images(path), None

    def find(prefix: str) -> Path | None:
        matches = sorted(p for p in path.iterdir() if p.name.startswith(prefix) and "idx3" in p.name)
        return matches[0] if matches else None

    train, test = find("train-images"), find("t10k-images")
    if train is None:
        raise DataError(f"no 'train-images-idx3-ubyte[.gz]' file found in '{path}'")
    return images(train), (images(test) if test is not None else None)
