"""The ``reference_scores`` block of a card: per-item scores of held-out data that calibrate the anomaly scores.

Export computes the module's outputs on held-out items and hands them here; the service reads the same block
back (``service.scoring``). Both therefore compute every score with :mod:`artifact.scores`, and a change to a
score's maths changes what export writes and what the service compares against together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from artifact import scores
from artifact.contract import bits_per_dim

DIGITS = 6  # per-item values are rounded in the card: the scores differ far above 1e-6


def reference_scores(
    log_likelihood: ArrayLike,
    latents: ArrayLike,
    pixels: ArrayLike | None,
    *,
    split: str = "val",
    compressor: scores.Compressor = scores.DEFAULT_COMPRESSOR,
    coarse_dims: int | None = None,
) -> dict[str, Any]:
    """The card's ``reference_scores`` from the exported module's outputs on ``n`` held-out items.

    Args:
        log_likelihood: ``(n,)`` nats, as the module's ``log_prob`` returns them.
        latents: ``(n, D)`` latents as the service encodes the items (images at their bin centre).
        pixels: ``(n, C, H, W)`` 8-bit values of image items (the ``complexity`` score), None for vectors.
        split: which split the items come from (never trained on).
        compressor: the compressor of the ``complexity`` score.
        coarse_dims: how many trailing latent coordinates the flow's coarsest scale produces (the ``coarse``
            score), None for flows without scales.

    Returns:
        ``{"split", "log_likelihood", "bits_per_dim", ["complexity", "complexity_compressor"], "latent",
        "latent_mean", "latent_std", ["coarse", "coarse_dims"]}`` (docs/artifact.md).
    """
    nats = np.asarray(log_likelihood, dtype=np.float64).reshape(-1)
    z = np.asarray(latents, dtype=np.float64).reshape(len(nats), -1)
    bits = bits_per_dim(nats, z.shape[1])
    block: dict[str, Any] = {"split": split, "log_likelihood": _rounded(nats), "bits_per_dim": _rounded(bits)}
    if pixels is not None:
        block["complexity"] = _rounded(scores.complexity_scores(bits, pixels, compressor))
        block["complexity_compressor"] = compressor
    gaussian = scores.fit_latent_gaussian(z)
    block["latent"] = _rounded(scores.latent_scores(z, gaussian))
    block["latent_mean"] = [float(v) for v in gaussian.mean]
    block["latent_std"] = [float(v) for v in gaussian.std]
    if coarse_dims is not None:
        block["coarse"] = _rounded(scores.coarse_scores(z, coarse_dims))
        block["coarse_dims"] = int(coarse_dims)
    return block


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), DIGITS) for v in values]
