"""Tiny artifacts exported by ``training.export`` with reference scores.

``digits`` (1x8x8 RealNVP) and ``moons`` (2-D NVPNet) are untrained but perturbed flows; their reference scores
are computed at export from ``REFERENCE_SIZE`` draws of a fixed "in-distribution" generator, so fresh draws of
the same generator are exchangeable with the reference and the conformal guarantee can be tested. ``legacy`` is
``digits`` with the card an export wrote before complexity and latent references existed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from tests.support.artifacts import image_flow, vector_flow
from training.export import export_artifact

REFERENCE_SIZE = 2000
DATASET = {"name": "synthetic", "splits": {"train": 0, "val": REFERENCE_SIZE, "test": REFERENCE_SIZE}}
METRICS = {"test_bits_per_dim": 1.0, "test_nll_nats": 1.0}


def bar_images(count: int, seed: int) -> np.ndarray:
    """In-distribution items of ``digits``: uint8 ``(count, 1, 8, 8)``, a bright bar on a dark noisy background."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(count, 1, 8, 8))
    for index in range(count):
        position = rng.integers(0, 8)
        if index % 2:
            images[index, 0, position, :] = rng.integers(180, 256, size=8)
        else:
            images[index, 0, :, position] = rng.integers(180, 256, size=8)
    return images.astype(np.uint8)


def moon_points(count: int, seed: int) -> np.ndarray:
    """In-distribution items of ``moons``: float32 ``(count, 2)`` from a fixed Gaussian mixture."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-1.0, 0.5], [1.0, -0.5]])
    return (centres[rng.integers(0, 2, count)] + 0.3 * rng.standard_normal((count, 2))).astype(np.float32)


def build_anomaly_store(root: Path) -> Path:
    """``digits``, ``moons`` and ``legacy`` artifacts with reference scores of ``REFERENCE_SIZE`` items."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_artifact(
            image_flow(),
            root / "digits",
            name="digits",
            dataset=DATASET,
            metrics=METRICS,
            reference=torch.from_numpy(bar_images(REFERENCE_SIZE, seed=1)),
        )
        export_artifact(
            vector_flow(),
            root / "moons",
            name="moons",
            dataset=DATASET,
            metrics=METRICS,
            reference=torch.from_numpy(moon_points(REFERENCE_SIZE, seed=1)),
        )
    finally:
        torch.set_num_threads(threads)
    shutil.copytree(root / "digits", root / "legacy")
    card = json.loads((root / "legacy" / "card.json").read_text())
    card["name"] = "legacy"
    card["created_at"] = "2026-11-01T10:00:00Z"
    for key in ("complexity", "complexity_compressor", "latent", "latent_mean", "latent_std", "coarse", "coarse_dims"):
        del card["reference_scores"][key]
    (root / "legacy" / "card.json").write_text(json.dumps(card, indent=2))
    return root
