"""Batch sizes the device sees: the sizes warmed at load and, on CUDA, the shape buckets batches are padded to.

On CUDA every new input shape costs kernel selection and workspace allocation (cuDNN picks an algorithm per
shape), so a batch of 37 rows that ran unwarmed would pay it inside a request. There the batcher's batches are
padded up to a *bucket*: a power of two up to ``MAX_BATCH_SIZE`` (and ``MAX_BATCH_SIZE`` itself), each bucket
warmed at load. Padding rows repeat the batch's last row, so they are always inside the model's support, and are
dropped before the results leave the device. The flows' eval-mode outputs of one row never depend on its batch
mates, so padding changes no result beyond float32 kernel choice (see ``Batcher.submit``'s ``exclusive``).

On CPU nothing is padded (oneDNN has no per-shape set-up worth avoiding, and padded rows would be paid in full):
the warm sizes stay 1 and ``min(MAX_BATCH_SIZE, 8)``.
"""

from __future__ import annotations

import torch

CPU_WARM_SIZES = (1, 8)


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch_size``, and ``max_batch_size`` itself: ``64`` → ``(1, 2, 4, ..., 64)``.

    Raises:
        ValueError: ``max_batch_size < 1``.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size: expected at least 1, got {max_batch_size}")
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def warm_batch_sizes(max_batch_size: int, device: torch.device) -> tuple[int, ...]:
    """The batch sizes a model is warmed up at on ``device``: every bucket on CUDA, 1 and ``min(max, 8)`` on CPU.

    On CUDA the runner pads to exactly these sizes (``ModelRunner.warm_up`` keeps them as its buckets).
    """
    if device.type == "cuda":
        return bucket_sizes(max_batch_size)
    return tuple(sorted({1, min(max_batch_size, CPU_WARM_SIZES[1])}))


def bucket_for(rows: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding ``rows`` (``rows`` itself when there are no buckets or none is large enough)."""
    for size in buckets:
        if size >= rows:
            return size
    return rows


def pad_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` ``(n, ...)`` grown to ``(size, ...)`` by repeating its last row; ``x`` itself when ``size <= n``."""
    missing = size - x.shape[0]
    if missing <= 0:
        return x
    return torch.cat([x, x[-1:].expand(missing, *x.shape[1:])])
