"""Numeric precision of the decode direction: exact float32 (the default) or opt-in bfloat16 autocast.

``bf16`` runs the artifact's own TorchScript ``decode`` under ``torch.autocast(device, bfloat16)``: convolutions and
matrix products (autocast's lower-precision list) run in bfloat16 (8-bit mantissas); the element-wise work right
after them stays bfloat16 until it meets a float32 tensor, where type promotion returns to float32, and the result
comes back as float32. The artifact is neither copied nor
re-exported. TorchScript honours eager autocast here because the runner calls the frozen graph as-is
(``torch.jit.optimized_execution(False)``): each operation goes through the dispatcher, whose autocast layer casts
its inputs. The JIT's own autocast pass, which rewrites graphs, does not run on that path.

Scores never use it. An 8-bit mantissa moves a log-likelihood of ~1,000 nats by whole nats, far beyond the
float32 agreement the card's reference scores and p-values are built on, so ``encode`` stays float32 (the API
refuses ``precision`` on scoring routes with a 422).

Where bfloat16 is emulated it is slower, not faster: on an AVX2-only CPU (AMD EPYC) a bf16 decode took 6-10× as
long as fp32. So by default (``ALLOW_BF16=auto``) ``bf16`` is offered only where the device computes it natively:
CUDA devices with bfloat16 support, and CPUs that have AVX512-BF16 or AMX-BF16 and a oneDNN with bfloat16 kernels.

Measured error and speed, per device: docs/benchmarks.md (``bench/precision.py``).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
FP32: Precision = "fp32"
BF16: Precision = "bf16"
PRECISIONS: tuple[Precision, ...] = (FP32, BF16)
# CPU flags (Linux /proc/cpuinfo) of instructions that compute in bfloat16.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def precision_scope(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The context to run a ``decode`` of ``device`` in at ``precision``.

    Raises:
        ValueError: an unknown precision (the API validates requests, so this is an internal error).
    """
    if precision == FP32:
        return contextlib.nullcontext()
    if precision == BF16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")


@functools.lru_cache(maxsize=8)
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (so ``bf16`` can be faster than ``fp32`` there).

    CUDA: ``torch.cuda.is_bf16_supported`` without emulation. CPU: oneDNN has bfloat16 kernels and the processor
    advertises AVX512-BF16 or AMX-BF16 (read once from ``/proc/cpuinfo``; elsewhere assumed absent).
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        flags = {flag for line in CPUINFO.read_text().splitlines() if line.startswith("flags") for flag in line.split()}
    except OSError:
        return False
    return bool(flags & NATIVE_BF16_CPU_FLAGS)


def bf16_offered(allow: str, device: torch.device) -> bool:
    """Whether requests may ask for ``bf16`` under ``ALLOW_BF16 = allow`` (``auto``, ``true``, ``false``)."""
    if allow == "auto":
        return native_bf16(device)
    return allow == "true"
