"""What a bulk-scoring run reads: folders, zip and tar archives, ``.npz`` arrays and NDJSON files, item by item.

Every reader is a generator that holds one item at a time (a file, an archive member, one row of an array, one
line), so memory stays bounded whatever the size of the source. A file or line that cannot be read becomes an
``Item`` with an ``error`` (a row of the output, never an exception), so one bad file never stops a run.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FILE_BYTES = 16 * 1024 * 1024  # one image is never this large; a bigger file is refused unread
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
NDJSON_SUFFIXES = (".ndjson", ".jsonl")


@dataclass(frozen=True)
class Item:
    """One thing to score.

    Attributes:
        id: the file's path inside the source, ``ARRAY[i]`` for an array row, or the NDJSON ``id``.
        image: the bytes of a PNG/JPEG file (sent as base64 ``images``).
        inputs: the item as nested lists of numbers (sent as ``inputs``).
        error: why it could not be read (written as a row, never sent).
    """

    id: str
    image: bytes | None = None
    inputs: Any = None
    error: str | None = None

    @property
    def kind(self) -> str:
        """``image``, ``inputs`` or ``error``: a request carries items of one kind only."""
        if self.error is not None:
            return "error"
        return "image" if self.image is not None else "inputs"


@dataclass(frozen=True)
class Source:
    """A readable source: its items (skipping the ids in ``skip``) and, when cheap to know, how many there are."""

    items: Callable[[Container[str]], Iterator[Item]]
    total: Callable[[], int | None]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _read_capped(stream: IO[bytes], item_id: str, size: int | None) -> Item:
    """The whole stream as an image item, or an error item when it is over ``MAX_FILE_BYTES``."""
    if size is not None and size > MAX_FILE_BYTES:
        return Item(item_id, error=f"expected a file of at most {MAX_FILE_BYTES} bytes, got {size}")
    data = stream.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        return Item(item_id, error=f"expected a file of at most {MAX_FILE_BYTES} bytes, got more")
    return Item(item_id, image=data)


# ------------------------------------------------------------------------------------------------- folders
def _folder_files(root: Path) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()  # a stable order: resumed runs and tests see the files the same way
        for name in sorted(files):
            if _is_image(name):
                yield Path(directory) / name


def folder_items(root: Path, skip: Container[str]) -> Iterator[Item]:
    """Every PNG/JPEG file under ``root`` (recursively), named by its path relative to ``root``."""
    for path in _folder_files(root):
        item_id = path.relative_to(root).as_posix()
        if item_id in skip:
            continue
        try:
            with path.open("rb") as stream:
                yield _read_capped(stream, item_id, path.stat().st_size)
        except OSError as exc:
            yield Item(item_id, error=f"expected a readable file, got {type(exc).__name__}: {exc.strerror or exc}")


# ------------------------------------------------------------------------------------------------- archives
def zip_items(path: Path, skip: Container[str]) -> Iterator[Item]:
    """Every PNG/JPEG member of a zip archive, read one at a time (the central directory says where)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        yield Item(path.name, error=f"expected a readable zip archive, got {type(exc).__name__}: {exc}")
        return
    with archive:
        for info in archive.infolist():
            if info.is_dir() or not _is_image(info.filename) or info.filename in skip:
                continue
            try:
                with archive.open(info) as stream:
                    yield _read_capped(stream, info.filename, info.file_size)
            except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:  # CRC errors, encrypted members
                yield Item(info.filename, error=f"expected a readable archive member, got {type(exc).__name__}: {exc}")


def tar_items(path: Path, skip: Container[str]) -> Iterator[Item]:
    """Every PNG/JPEG member of a (compressed) tar archive, streamed in order (``r|*``: nothing is seeked)."""
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile() or not _is_image(member.name) or member.name in skip:
                    continue
                stream = archive.extractfile(member)
                assert stream is not None, "a regular file member always has a stream"
                yield _read_capped(stream, member.name, member.size)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:  # zlib: a truncated .tar.gz
        yield Item(path.name, error=f"expected a readable tar archive, got {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------------- arrays
def _npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    return np.lib.format.read_array_header_2_0(stream)


def _npz_members(path: Path, keys: Container[str] | None) -> Iterator[tuple[zipfile.ZipFile, zipfile.ZipInfo, str]]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if info.filename.endswith(".npy") and (keys is None or key in keys):
                yield archive, info, key


def npz_items(path: Path, skip: Container[str], keys: Container[str] | None = None) -> Iterator[Item]:
    """Every row (item along axis 0) of every array of an ``.npz`` file, read row by row from its member.

    A 1-D array is read as items of one value each (a model of dimension 1). Object arrays (pickles) and
    Fortran-ordered arrays are refused unread.
    """
    try:
        for archive, info, key in _npz_members(path, keys):
            with archive.open(info) as stream:
                shape, fortran_order, dtype = _npy_header(stream)
                if dtype.hasobject or fortran_order or not shape:
                    reason = "an object array" if dtype.hasobject else "Fortran order" if fortran_order else "a scalar"
                    yield Item(key, error=f"expected a C-ordered numeric array with a first axis, got {reason}")
                    continue
                item_shape = shape[1:] or (1,)
                row_bytes = math.prod(item_shape) * dtype.itemsize
                for index in range(shape[0]):
                    row = stream.read(row_bytes)
                    item_id = f"{key}[{index}]"
                    if len(row) != row_bytes:
                        yield Item(item_id, error=f"expected {row_bytes} bytes for this row, got {len(row)}")
                        break
                    if item_id not in skip:
                        yield Item(item_id, inputs=np.frombuffer(row, dtype=dtype).reshape(item_shape).tolist())
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        yield Item(path.name, error=f"expected a readable .npz file, got {type(exc).__name__}: {exc}")


def npz_total(path: Path, keys: Container[str] | None = None) -> int | None:
    """Rows of every array of an ``.npz`` file, from the headers alone."""
    try:
        total = 0
        for archive, info, _ in _npz_members(path, keys):
            with archive.open(info) as stream:
                shape = _npy_header(stream)[0]
                total += shape[0] if shape else 1
        return total
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


# ------------------------------------------------------------------------------------------------- NDJSON
def _ndjson_item(line: str, number: int) -> Item:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return Item(f"line {number}", error=f"expected a JSON object on this line, got invalid JSON ({exc})")
    if not isinstance(record, dict):
        return Item(f"line {number}", error=f"expected a JSON object on this line, got {type(record).__name__}")
    item_id = str(record.get("id", f"line {number}"))
    if "inputs" in record and "image" not in record:
        return Item(item_id, inputs=record["inputs"])
    if "image" in record and "inputs" not in record and isinstance(record["image"], str):
        try:
            return Item(item_id, image=base64.b64decode(record["image"], validate=True))
        except (binascii.Error, ValueError) as exc:
            return Item(item_id, error=f"expected 'image' as base64, got text that is not ({exc})")
    return Item(item_id, error=f"expected exactly one of 'inputs' (numbers) or 'image' (base64), got {sorted(record)}")


def ndjson_items(path: Path, skip: Container[str]) -> Iterator[Item]:
    """One item per non-empty line: ``{"id": ..., "inputs": [...]}`` or ``{"id": ..., "image": "<base64>"}``."""
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    item = _ndjson_item(line, number)
                    if item.id not in skip:
                        yield item
    except OSError as exc:
        yield Item(path.name, error=f"expected a readable file, got {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------------- dispatch
def open_source(path: Path, keys: Container[str] | None = None) -> Source:
    """The reader for ``path``: a folder, ``.zip``, ``.tar``(``.gz``/``.bz2``/``.xz``), ``.npz`` or NDJSON.

    Raises:
        ValueError: ``path`` does not exist or is none of these.
    """
    name = path.name.lower()
    if path.is_dir():
        return Source(lambda skip: folder_items(path, skip), lambda: sum(1 for _ in _folder_files(path)))
    if not path.is_file():
        raise ValueError(f"PATH: expected a folder or a file, got nothing at {path}")
    if name.endswith(".npz"):
        return Source(lambda skip: npz_items(path, skip, keys), lambda: npz_total(path, keys))
    if name.endswith(".zip"):
        return Source(lambda skip: zip_items(path, skip), lambda: _zip_total(path))
    if name.endswith(TAR_SUFFIXES):
        return Source(lambda skip: tar_items(path, skip), lambda: None)  # counting would read it twice
    if name.endswith(NDJSON_SUFFIXES):
        return Source(lambda skip: ndjson_items(path, skip), lambda: None)
    raise ValueError(
        f"PATH: expected a folder, .zip, {', '.join(TAR_SUFFIXES)}, .npz or {', '.join(NDJSON_SUFFIXES)}, got {path}"
    )


def _zip_total(path: Path) -> int | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(1 for info in archive.infolist() if not info.is_dir() and _is_image(info.filename))
    except (OSError, zipfile.BadZipFile):
        return None
