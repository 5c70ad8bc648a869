"""Anomaly scores of data items and their calibration against a model's reference scores (no HTTP here).

Every score is oriented so that **higher means more anomalous**:

* ``nll``: negative log-likelihood in bits per dimension.
* ``complexity``: the input-complexity corrected score of Serrà et al. (2020), ``S(x) = bits/dim(x) − L(x)``
  with ``L(x)`` the length in bits per dimension of a lossless compression of the 8-bit image (image models
  only). Simple images (constant, smooth) get a high likelihood *and* a short code, so ``S`` cancels the bias
  that makes raw likelihood prefer them (Nalisnick et al., 2019a).
* ``latent``: the negative log-density of the latent ``z = encode(x)`` (image pixels at their bin centre) under
  a diagonal Gaussian ``N(μ, diag σ²)`` fitted to the reference latents at export, per dimension and without
  the constant: ``mean_d 0.5 ((z_d − μ_d) / σ_d)² + log σ_d`` (nats). It leaves out the log-determinant, the term
  that rewards simple images (Kirichenko et al., 2020), and measures where an item lands in latent space
  relative to where held-out in-distribution items land.
* ``coarse``: the negative log-density, per dimension and without the constant, of the coarsest scale's latent
  under the flow's own prior ``N(0, I)``: ``mean 0.5 z_c²`` over the last ``coarse_dims`` coordinates of
  ``z = encode(x)`` (nats), the part of a multi-scale flow's latent that its last scale, seeing the whole image
  at the lowest resolution, produces (Dinh et al. 2017, §3.6). Its first scales model local pixel correlations,
  which most images share (Kirichenko et al., 2020; Schirrmeister et al., 2020): the last scale's share of the
  likelihood carries more of the global shape.
* ``combined``: Fisher's combination of the conformal p-values of ``complexity``, ``latent`` and ``coarse``,
  ``−Σ log p`` (image models; cards exported before ``coarse`` combine the first two). Each part catches what
  the others miss: ``complexity`` the simple images that raw likelihood prefers, ``latent`` the items that land
  where held-out items do not (digits moved off-centre), ``coarse`` shapes that are locally plausible but globally
  not (printed characters, digits overlaid, occluded or changed in contrast). Its reference scores are those of
  the reference items themselves, each p-value computed against the other reference items (leave-one-out).
* ``typicality``: the test of Nalisnick et al. (2019b) for a batch of ``M`` items submitted together,
  ``|mean bits/dim of the batch − H|`` with ``H`` the model's entropy estimated on held-out data. It is
  two-sided: batches that are *too likely* are as atypical as batches that are too unlikely.

Calibration: an item's ``p_value`` is the conformal p-value ``(1 + #{ref ≥ s}) / (n + 1)`` against the ``n``
reference scores of held-out in-distribution data stored in the card at export; ``is_anomaly`` is
``p_value ≤ fpr``, which flags at most a fraction ``fpr`` of in-distribution items (for items exchangeable with
the reference data). Typicality's reference is a seeded bootstrap of batches of ``M`` reference items, so it is
deterministic.

References:
    Serrà et al., "Input complexity and out-of-distribution detection with likelihood-based generative
    models", ICLR 2020. Nalisnick et al., "Do deep generative models know what they don't know?", ICLR 2019.
    Nalisnick et al., "Detecting out-of-distribution inputs to deep generative models using typicality",
    arXiv:1906.02994, 2019. Kirichenko et al., "Why normalizing flows fail to detect out-of-distribution data",
    NeurIPS 2020. Schirrmeister et al., "Understanding anomaly detection with deep invertible networks through
    hierarchies of distributions and features", NeurIPS 2020. Dinh et al., "Density estimation using Real NVP",
    ICLR 2017. Fisher, *Statistical Methods for Research Workers*, 1925, §21.1 (combining p-values).
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

ScoreName = Literal["nll", "complexity", "latent", "coarse", "combined", "typicality"]
Compressor = Literal["png", "deflate"]

SCORES: tuple[ScoreName, ...] = ("nll", "complexity", "latent", "coarse", "combined", "typicality")
ITEM_SCORES: tuple[ScoreName, ...] = ("nll", "complexity", "latent", "coarse", "combined")
COMBINED_PARTS: tuple[ScoreName, ...] = ("complexity", "latent", "coarse")
# The parts a card needs for ``combined`` at all: cards exported before ``coarse`` combine these two.
COMBINED_REQUIRED: tuple[ScoreName, ...] = ("complexity", "latent")
COMPRESSORS: tuple[Compressor, ...] = ("png", "deflate")
# What export stores and what the service uses when a card does not name its compressor (see docs/anomaly.md).
DEFAULT_COMPRESSOR: Compressor = "png"
# The bootstrap of typicality: seeded, so a batch always gets the same threshold and p-value.
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
# zlib stream framing inside PNG IDAT data: 2 header bytes + 4 Adler-32 bytes, carrying no information.
_ZLIB_FRAMING_BYTES = 6
_PNG_SIGNATURE_BYTES = 8
_PNG_CHUNK_FRAMING_BYTES = 12  # length, type and CRC of every chunk


def default_score(is_image: bool) -> ScoreName:
    """The score that decides ``is_anomaly`` when a request does not choose: ``combined`` for images.

    ``combined`` catches what raw likelihood prefers (simple images, through ``complexity``), items that land
    where held-out latents do not (``latent``) and globally implausible shapes (``coarse``); docs/anomaly.md
    gives its AUROC on every family of ``bench/ood.py``, the ones it misses included, and the order in which the
    scores were added. Vector models have no compressor, so they default to ``nll``.
    """
    return "combined" if is_image else "nll"


# ------------------------------------------------------------------------------------------------ complexity
def _png_payload_bytes(pixels: np.ndarray) -> int:
    """Bytes of compressed image data in a PNG of ``pixels`` ``(H, W)``/``(H, W, 3)`` uint8, framing removed.

    Pillow writes the PNG at the highest zlib level; only the IDAT payloads are counted (the signature, the
    IHDR/IEND chunks, chunk framing and the zlib header/checksum are a constant ~63 bytes that would swamp the
    ~250 bytes of a 28×28 digit).
    """
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    data = buffer.getvalue()
    position, payload = _PNG_SIGNATURE_BYTES, 0
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + 8] == b"IDAT":
            payload += length
        position += _PNG_CHUNK_FRAMING_BYTES + length
    return payload - _ZLIB_FRAMING_BYTES


def _deflate_bytes(pixels: np.ndarray) -> int:
    """Bytes of a raw DEFLATE stream (level 9, no zlib header or checksum) of the pixels in row-major order."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return len(compressor.compress(pixels.tobytes()) + compressor.flush())


_COMPRESSED_BYTES: dict[str, Callable[[np.ndarray], int]] = {"png": _png_payload_bytes, "deflate": _deflate_bytes}


def compression_bits_per_dim(pixels: ArrayLike, compressor: Compressor) -> np.ndarray:
    """``L(x)``: compressed length of each 8-bit image in bits per dimension.

    Args:
        pixels: ``(N, C, H, W)`` integer intensities 0..255 (any numeric dtype holding integers).
        compressor: ``png`` (Pillow, level 9, IDAT payload only) or ``deflate`` (raw zlib level 9).

    Returns:
        float64 ``(N,)``.

    Raises:
        ValueError: an unknown compressor or pixels that are not ``(N, C, H, W)`` with C in (1, 3).
    """
    if compressor not in _COMPRESSED_BYTES:
        raise ValueError(f"expected a compressor in {list(COMPRESSORS)}, got {compressor!r}")
    array = np.asarray(pixels)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"expected pixels of shape (N, C, H, W) with C in (1, 3), got {array.shape}")
    # (N, H, W, C) uint8: the byte order an image file stores
    images = np.ascontiguousarray(array.astype(np.uint8).transpose(0, 2, 3, 1))
    dimension = math.prod(array.shape[1:])
    measure = _COMPRESSED_BYTES[compressor]
    lengths = [measure(image[:, :, 0] if image.shape[2] == 1 else image) for image in images]
    return np.asarray(lengths, dtype=np.float64) * 8.0 / dimension


def complexity_scores(bits_per_dim: ArrayLike, pixels: ArrayLike, compressor: Compressor) -> np.ndarray:
    """Serrà et al.'s ``S(x) = bits/dim(x) − L(x)``, float64 ``(N,)`` (higher = more anomalous)."""
    return _as_float64(bits_per_dim) - compression_bits_per_dim(pixels, compressor)


# ------------------------------------------------------------------------------------------------ latent
@dataclass(frozen=True)
class LatentGaussian:
    """A diagonal Gaussian ``N(mean, diag std²)`` over the latent space, ``(D,)`` each, ``std > 0``."""

    mean: np.ndarray
    std: np.ndarray


def fit_latent_gaussian(latents: ArrayLike) -> LatentGaussian:
    """Maximum-likelihood diagonal Gaussian of latents ``(n, D)``: per-dimension mean and (ddof 0) std.

    Raises:
        ValueError: fewer than 2 rows, non-finite latents, or a dimension with zero spread.
    """
    z = _as_float64_matrix(latents)
    if z.shape[0] < 2 or not np.isfinite(z).all():
        raise ValueError(f"expected >= 2 rows of finite latents, got shape {z.shape}")
    std = z.std(axis=0)
    if not (std > 0).all():
        raise ValueError(f"expected latents with spread in every dimension, got zero std in {int((std <= 0).sum())}")
    return LatentGaussian(mean=z.mean(axis=0), std=std)


def latent_scores(latents: ArrayLike, gaussian: LatentGaussian) -> np.ndarray:
    """``mean_d 0.5 ((z_d − μ_d) / σ_d)² + log σ_d`` per row of ``latents`` ``(N, D)``: float64 ``(N,)`` nats.

    The negative log-density of ``z`` under ``gaussian`` divided by ``D``, without the ``0.5 log 2π``
    constant (higher = more anomalous).
    """
    z = _as_float64_matrix(latents)
    if z.shape[1] != gaussian.mean.size:
        raise ValueError(f"expected latents of dimension {gaussian.mean.size}, got shape {z.shape}")
    standardised = (z - gaussian.mean) / gaussian.std
    return 0.5 * np.square(standardised).mean(axis=1) + float(np.log(gaussian.std).mean())


def coarse_scores(latents: ArrayLike, coarse_dims: int) -> np.ndarray:
    """``mean 0.5 z_c²`` over the last ``coarse_dims`` coordinates of each row of ``latents`` ``(N, D)``: ``(N,)`` nats.

    The negative log-density under ``N(0, I)`` of the coarsest scale's latent divided by ``coarse_dims``, without
    the ``0.5 log 2π`` constant (higher = more anomalous).
    """
    z = _as_float64_matrix(latents)
    if not 1 <= coarse_dims <= z.shape[1]:
        raise ValueError(f"expected coarse_dims in [1, {z.shape[1]}] (the latent dimension), got {coarse_dims}")
    return 0.5 * np.square(z[:, z.shape[1] - coarse_dims :]).mean(axis=1)


# ------------------------------------------------------------------------------------------------ calibration
@dataclass(frozen=True)
class Calibrated:
    """Scores placed against a reference distribution.

    Attributes:
        values: the scores, ``(N,)``.
        percentile: percentage of reference scores strictly below each score, in ``[0, 100]``.
        p_value: ``(1 + #{ref ≥ s}) / (n + 1)``, in ``(0, 1]``.
        is_anomaly: ``p_value ≤ fpr``.
        threshold: scores strictly above it are flagged; ``None`` when ``fpr < 1 / (n + 1)`` (no score can be).
    """

    values: np.ndarray
    percentile: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    threshold: float | None


def calibrate(scores: np.ndarray, reference: np.ndarray, fpr: float) -> Calibrated:
    """Conformal p-values, percentiles and flags of ``scores`` against ``reference`` at false-positive rate ``fpr``.

    For a score exchangeable with the ``n`` reference scores, ``P(p_value ≤ fpr) = ⌊fpr (n + 1)⌋ / (n + 1) ≤
    fpr``.

    Args:
        scores: ``(N,)`` scores, higher = more anomalous.
        reference: ``(n,)`` scores of held-out in-distribution items, ``n ≥ 1``.
        fpr: target false-positive rate in ``(0, 1)``.

    Raises:
        ValueError: an empty or non-finite reference, or ``fpr`` outside ``(0, 1)``.
    """
    values = _as_float64(scores)
    ordered = np.sort(_as_float64(reference))
    if ordered.size == 0 or not np.isfinite(ordered).all():
        raise ValueError(f"expected at least one finite reference score, got {ordered.size} values")
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"expected fpr in (0, 1), got {fpr}")
    n = ordered.size
    at_or_above = _count_at_or_above(ordered, values)
    below = n - at_or_above  # #{ref < s}
    p_value = (1.0 + at_or_above) / (n + 1.0)
    # p ≤ fpr  ⇔  #{ref ≥ s} ≤ k  ⇔  s > the (k+1)-th largest reference score
    k = math.floor(fpr * (n + 1) + 1e-9) - 1
    threshold = float(ordered[n - 1 - k]) if k >= 0 else None
    return Calibrated(
        values=values,
        percentile=100.0 * below / n,
        p_value=p_value,
        is_anomaly=at_or_above <= k,
        threshold=threshold,
    )


# ------------------------------------------------------------------------------------------------ combined
def conformal_p_values(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(1 + #{ref ≥ s}) / (n + 1)`` for each of ``scores`` ``(N,)`` against ``reference`` ``(n,)``."""
    ordered = np.sort(_as_float64(reference))
    return (1.0 + _count_at_or_above(ordered, _as_float64(scores))) / (ordered.size + 1.0)


def leave_one_out_p_values(reference: np.ndarray) -> np.ndarray:
    """Each reference score's p-value against the other ``n − 1``: ``(1 + #{others ≥ r_j}) / (n + 1)``.

    The denominator stays ``n + 1`` (as for a new item against all ``n``), so a reference item's p-value is
    never larger than a new item's with the same rank: calibrating against these errs on the conservative side.
    """
    values = _as_float64(reference)
    ordered = np.sort(values)
    return _count_at_or_above(ordered, values) / (ordered.size + 1.0)  # the count includes r_j itself


def _count_at_or_above(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``#{ref ≥ v}`` for each of ``values`` against the sorted reference ``ordered``."""
    return ordered.size - np.searchsorted(ordered, values, side="left")


def fisher_statistic(p_values: list[np.ndarray]) -> np.ndarray:
    """``−Σ_k log p_k`` per item (Fisher's method) of ``K`` p-value arrays ``(N,)``: float64 ``(N,)``."""
    return -np.sum(np.log(np.stack([_as_float64(p) for p in p_values])), axis=0)


def combined_scores(parts: list[np.ndarray], references: list[np.ndarray]) -> np.ndarray:
    """The ``combined`` score of items from their part scores ``(N,)`` and the parts' reference scores ``(n,)``."""
    return fisher_statistic([conformal_p_values(s, r) for s, r in zip(parts, references, strict=True)])


def combined_reference(references: list[np.ndarray]) -> np.ndarray:
    """The ``combined`` scores of the reference items themselves (leave-one-out p-values), ``(n,)``."""
    return fisher_statistic([leave_one_out_p_values(r) for r in references])


# ------------------------------------------------------------------------------------------------ typicality
@dataclass(frozen=True)
class Typicality:
    """The typicality test of one batch.

    Attributes:
        batch_size: ``M``, the items tested together.
        mean_nll: mean bits/dim of the batch.
        entropy: ``H``, mean bits/dim of the reference items (the model's entropy estimate).
        calibrated: the statistic ``|mean_nll − H|`` against its bootstrap distribution (one value).
    """

    batch_size: int
    mean_nll: float
    entropy: float
    calibrated: Calibrated


def bootstrap_typicality(
    reference_bits_per_dim: np.ndarray, batch_size: int, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED
) -> tuple[float, np.ndarray]:
    """The entropy estimate ``H`` and ``draws`` bootstrap statistics ``|mean of M resampled refs − H|``.

    Resampling is with replacement from a ``numpy`` generator seeded with ``seed``, so the result depends only
    on the reference scores and ``batch_size``.

    Returns:
        ``(H, statistics (draws,))``.
    """
    reference = _as_float64(reference_bits_per_dim)
    if reference.size < 2 or batch_size < 1:
        raise ValueError(f"expected >= 2 reference scores and batch_size >= 1, got {reference.size}, {batch_size}")
    entropy = float(reference.mean())
    generator = np.random.default_rng(seed)
    statistics = np.empty(draws, dtype=np.float64)
    for start in range(0, draws, 256):  # bounded memory for large batches
        stop = min(start + 256, draws)
        picks = generator.integers(0, reference.size, size=(stop - start, batch_size))
        statistics[start:stop] = np.abs(reference[picks].mean(axis=1) - entropy)
    return entropy, statistics


def typicality_test(batch_bits_per_dim: np.ndarray, entropy: float, bootstrap: np.ndarray, fpr: float) -> Typicality:
    """Test one batch: ``|mean bits/dim − H|`` placed against the bootstrap statistics of the same batch size."""
    batch = _as_float64(batch_bits_per_dim)
    mean_nll = float(batch.mean())
    statistic = np.array([abs(mean_nll - entropy)])
    return Typicality(batch.size, mean_nll, entropy, calibrate(statistic, bootstrap, fpr))


def _as_float64_matrix(values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array.reshape(len(array), -1)


def _as_float64(values: ArrayLike) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)
