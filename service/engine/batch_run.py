"""The executor side of one batch: run the model callable, check its rows, split the batch when memory runs out.

Everything here runs on the device's single executor thread. Concatenating and splitting rows per request happen
on the event loop (``Batcher``): every torch call from Python drops and retakes the GIL, and each retake on this
thread can wait a switch interval for the busy event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from service.engine.precision import FP32

BatchFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]
# What a CUDA allocator failure says. TorchScript re-raises an error from inside a scripted method as a plain
# RuntimeError carrying the TorchScript traceback (seen on CPU in torch 2.13 with a failed allocation), so the
# type alone would miss an out-of-memory inside the artifact.
CUDA_OOM_MESSAGE = "CUDA out of memory"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (``torch.OutOfMemoryError``, also through TorchScript)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and CUDA_OOM_MESSAGE in str(exc)


def release_cached_memory() -> None:
    """Give the CUDA caching allocator's free blocks back before a retry (nothing to do without CUDA in use)."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_batch(
    operation: BatchFn,
    inputs: torch.Tensor,
    precision: str = FP32,
    on_split: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Run one batch ``(B, ...)`` and check that every output has ``B`` rows.

    When the device runs out of memory the batch is halved and each half retried, down to single rows, with the
    CUDA cache emptied before each retry; the halves' outputs are concatenated back in order. Rows never depend
    on their batch mates (eval mode), so the answer is the same as from one pass.

    Args:
        operation: the model callable; called as ``operation(inputs)`` at ``fp32`` (the one-argument contract)
            and ``operation(inputs, precision=...)`` otherwise.
        inputs: the batch, ``(B, ...)``.
        precision: the batch's precision (``service.engine.precision``).
        on_split: called once per halving (counts it in the metrics).

    Raises:
        torch.OutOfMemoryError: even a single row does not fit (or the error is TorchScript's wrapped form).
        RuntimeError: the operation failed otherwise, or returned the wrong number of rows.
    """
    try:
        with torch.inference_mode():
            result = operation(inputs) if precision == FP32 else operation(inputs, precision=precision)
    except Exception as exc:
        if not is_out_of_memory(exc) or inputs.shape[0] == 1:
            raise
        result = None  # retried below, once the handler has let go of the failed pass's frames and tensors
    if result is None:
        if on_split is not None:
            on_split()
        half = (inputs.shape[0] + 1) // 2
        release_cached_memory()
        first = run_batch(operation, inputs[:half], precision, on_split)
        release_cached_memory()
        second = run_batch(operation, inputs[half:], precision, on_split)
        return tuple(torch.cat(pair) for pair in zip(first, second, strict=True))
    outputs = result if isinstance(result, tuple) else (result,)
    expected = inputs.shape[0]
    for output in outputs:
        if output.shape[0] != expected:
            raise RuntimeError(f"expected {expected} output rows, got {output.shape[0]}")
    return outputs


def timed_batch(
    operation: BatchFn, inputs: torch.Tensor, precision: str, on_split: Callable[[], None]
) -> tuple[tuple[torch.Tensor, ...], float]:
    """Executor side: ``run_batch`` and the seconds it took on the device thread.

    Timed here, not around the hand-off: with two batches in flight a batch also waits in the executor's queue
    behind the other, and that wait is not device time.
    """
    started = time.perf_counter()
    outputs = run_batch(operation, inputs, precision, on_split)
    return outputs, time.perf_counter() - started


def split_rows(outputs: tuple[torch.Tensor, ...], sizes: list[int]) -> list[tuple[torch.Tensor, ...]]:
    """Per-entry ``tuple`` of output rows, in order (views of ``outputs``)."""
    if len(sizes) == 1:
        return [outputs]
    per_output = [output.split(sizes) for output in outputs]
    return [tuple(parts) for parts in zip(*per_output, strict=True)]
