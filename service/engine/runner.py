"""One exported artifact turned into tensor operations: load, verify, warm up, encode, decode.

No HTTP and no queues here. Methods run synchronously on the caller's thread (the batcher calls them from the
device's executor thread) and take and return CPU tensors.

TorchScript's profiling executor re-specialises a graph for the input shapes it has seen, so the same row could
be computed by different kernels depending on the batch sizes served before (bitwise differences that break
seeded reproducibility) and the first calls at each new batch size are slow. ``torch.jit.freeze`` has already
optimised the exported graph, so calls run it as-is (``torch.jit.optimized_execution(False)``, a thread-local
switch).

On CUDA (docs/service.md): batches are padded up to the warmed shape buckets (``service.engine.buckets``), and
host ↔ device copies go through pinned host memory with non-blocking copies (the device copy is queued on the
stream with the forward pass; the host waits once, for the result). On CPU none of that applies and tensors go
straight through.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from artifact import (
    DEQUANTIZATION_OFFSET,
    MODULE_FILE,
    REQUIRED_METHODS,
    ArtifactError,
    ModelCard,
    bits_per_dim,
    read_card,
)
from service.engine.buckets import bucket_for, pad_rows
from service.engine.precision import FP32, precision_scope

logger = logging.getLogger(__name__)

LOG_2PI = math.log(2.0 * math.pi)

__all__ = ["ArtifactError", "ModelRunner", "read_card", "resolve_device"]


def resolve_device(requested: str) -> torch.device:
    """Map the ``DEVICE`` setting to a torch device (``auto`` → CUDA when present, else CPU).

    On CUDA, TF32 is switched off for the process: it rounds matmul and convolution inputs to 10-bit mantissas,
    which moves log-likelihoods by far more than float32 does, away from the reference scores the card's
    p-values were computed with on CPU.
    """
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"DEVICE: expected an available device, got {requested!r} without CUDA")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per row of ``z`` ``(B, D)``, computed in float64, shape ``(B,)``."""
    z64 = z.to(torch.float64)
    return -0.5 * (z64.square().sum(dim=1) + z64.shape[1] * LOG_2PI)


@dataclass
class ModelRunner:
    """A verified, warmed-up TorchScript flow and its card.

    Attributes:
        name: the model's name (its folder under ``MODEL_DIR``).
        card: the validated card.
        module: the loaded TorchScript module, on ``device``.
        device: where the module runs.
        module_path: the ``model.ts`` it was loaded from (named in errors).
        pad_to_warmed_sizes: whether ``warm_up`` makes its batch sizes the shape buckets (true on CUDA).
        buckets: batch sizes ``encode``/``decode`` pad their inputs up to (empty: no padding).
    """

    name: str
    card: ModelCard
    module: torch.jit.ScriptModule
    device: torch.device
    module_path: Path
    pad_to_warmed_sizes: bool = False
    buckets: tuple[int, ...] = ()

    @classmethod
    def load(cls, directory: Path, device: torch.device) -> ModelRunner:
        """Load ``directory/{card.json,model.ts}``, verify the checksum and methods; no warm-up yet.

        Raises:
            ArtifactError: naming the file that is missing, corrupt, tampered with or invalid.
        """
        card = read_card(directory)
        module_path = directory / MODULE_FILE
        if not module_path.is_file():
            raise ArtifactError(f"{module_path}: expected a TorchScript module, got no such file")
        # Hash and deserialise the very same bytes: a file swapped after the check is never loaded.
        data = module_path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != card.sha256:
            raise ArtifactError(f"{module_path}: checksum mismatch: expected sha256 {card.sha256}, got {actual}")
        try:
            module = torch.jit.load(io.BytesIO(data), map_location=device)
        except Exception as exc:  # TorchScript raises many types for corrupt archives
            raise ArtifactError(f"{module_path}: not a loadable TorchScript module: {exc}") from exc
        missing = [method for method in REQUIRED_METHODS if not hasattr(module, method)]
        if missing:
            raise ArtifactError(
                f"{module_path}: expected methods {list(REQUIRED_METHODS)}, got a module without {missing}"
            )
        module.eval()
        return cls(
            name=directory.name,
            card=card,
            module=module,
            device=device,
            module_path=module_path,
            pad_to_warmed_sizes=device.type == "cuda",
        )

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one data item, without the batch dimension."""
        return tuple(self.card.shape)

    @property
    def dimension(self) -> int:
        """Latent (and data) dimension ``D``."""
        return self.card.dimension

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data ``(B, *shape)`` → ``(z (B, D), log_det (B,))``, on CPU, float32 (always: scores are exact)."""
        rows = x.shape[0]
        with torch.jit.optimized_execution(False):
            z, log_det = self.module.encode(self._to_device(pad_rows(x, bucket_for(rows, self.buckets))))
        return _to_host(_first_rows(z, rows)), _to_host(_first_rows(log_det, rows))

    def decode(self, z: torch.Tensor, precision: str = FP32) -> torch.Tensor:
        """Latent ``(B, D)`` → data ``(B, *shape)`` in the module's continuous data space, on CPU, float32.

        Args:
            z: latents ``(B, D)``.
            precision: ``fp32`` (exact) or ``bf16`` (autocast, see ``service.engine.precision``).
        """
        rows = z.shape[0]
        with torch.jit.optimized_execution(False), precision_scope(precision, self.device):
            decoded = self.module.decode(self._to_device(pad_rows(z, bucket_for(rows, self.buckets))))
        return _to_host(_first_rows(decoded, rows))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        # Every torch call from Python drops and retakes the GIL; on the device thread each retake can wait a
        # whole switch interval for the busy event loop, so calls that would be no-ops are skipped.
        if x.device == self.device and x.dtype == torch.float32:
            return x
        if self.device.type == "cuda" and x.device.type == "cpu":
            # Pageable memory would be staged through a driver buffer synchronously; a pinned copy is one DMA,
            # queued on the stream ahead of the forward pass. The caching host allocator keeps the block until
            # the copy has run.
            staging = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
            staging.copy_(x)
            return staging.to(self.device, non_blocking=True)
        return x.to(self.device, torch.float32)

    def reference_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The module's own ``log_prob`` of data ``(B, *shape)``, float64 on CPU (used to check the contract)."""
        with torch.jit.optimized_execution(False):
            return self.module.log_prob(x.to(self.device, torch.float32)).to("cpu", torch.float64)

    def scoring_input(self, x: torch.Tensor) -> torch.Tensor:
        """What ``encode`` receives for a data item: 8-bit pixels move to their bin centre, vectors stay."""
        return x + DEQUANTIZATION_OFFSET if self.card.is_image else x

    def log_likelihood(self, z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
        """``log N(z) + log_det`` in nats, float64 ``(B,)``.

        Equals the module's ``log_prob(x)`` for ``(z, log_det) = encode(scoring_input(x))`` (checked at warm-up).
        """
        return standard_normal_log_density(z) + log_det.to(torch.float64)

    def bits_per_dim(self, log_likelihood: torch.Tensor) -> torch.Tensor:
        """``-log_likelihood / (D ln 2)``."""
        return bits_per_dim(log_likelihood, self.dimension)

    def example_batch(self, batch_size: int, seed: int = 0) -> torch.Tensor:
        """Deterministic plausible data items: random 8-bit images or standard-normal vectors."""
        generator = torch.Generator().manual_seed(seed)
        if self.card.is_image:
            return torch.randint(0, 256, (batch_size, *self.item_shape), generator=generator).float()
        return torch.randn(batch_size, *self.item_shape, generator=generator)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 2), repeats: int = 2) -> None:
        """Run every method a few times and check the outputs against the contract.

        The first calls allocate the kernels' workspaces, so real traffic does not pay for them.

        When ``pad_to_warmed_sizes`` is set (CUDA), the warmed sizes become the shape buckets afterwards: every
        later batch runs at one of these shapes.

        Raises:
            ArtifactError: a method fails, returns the wrong shape, non-finite values, or a ``log_prob`` that
                disagrees with ``log N(encode(x).z) + log_det``.
        """
        where = str(self.module_path)
        try:
            with torch.inference_mode():
                for batch_size in batch_sizes:
                    for _ in range(repeats):
                        self._check_once(batch_size)
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: {exc}") from exc
        except Exception as exc:
            raise ArtifactError(f"{where}: warm-up call failed: {type(exc).__name__}: {exc}") from exc
        if self.pad_to_warmed_sizes:
            self.buckets = tuple(sorted(set(batch_sizes)))

    def _check_once(self, batch_size: int) -> None:
        x = self.example_batch(batch_size)
        dim = self.dimension
        z, log_det = self.encode(self.scoring_input(x))
        if tuple(z.shape) != (batch_size, dim) or tuple(log_det.shape) != (batch_size,):
            raise ArtifactError(
                f"encode: expected shapes ({batch_size}, {dim}) and ({batch_size},), "
                f"got {tuple(z.shape)} and {tuple(log_det.shape)}"
            )
        decoded = self.decode(z)
        if tuple(decoded.shape) != (batch_size, *self.item_shape):
            raise ArtifactError(f"decode: expected shape {(batch_size, *self.item_shape)}, got {tuple(decoded.shape)}")
        reference = self.reference_log_prob(x)
        if tuple(reference.shape) != (batch_size,):
            raise ArtifactError(f"log_prob: expected shape ({batch_size},), got {tuple(reference.shape)}")
        derived = self.log_likelihood(z, log_det)
        for name, tensor in (("encode", z), ("encode log_det", log_det), ("decode", decoded), ("log_prob", reference)):
            if not torch.isfinite(tensor).all():
                raise ArtifactError(f"{name}: expected finite values on example data, got NaN/Inf")
        tolerance = 1e-4 * reference.abs() + 1e-2
        if ((derived - reference).abs() > tolerance).any():
            raise ArtifactError(
                "log_prob: expected log_prob(x) == log N(encode(x').z) + log_det with x' = "
                f"{'x + 0.5' if self.card.is_image else 'x'}, got {reference.tolist()} vs {derived.tolist()}"
            )


def _first_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of ``x`` (the padding dropped on the device), ``x`` itself when unpadded."""
    return x if x.shape[0] == rows else x[:rows]


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a float32 CPU tensor, without a torch call when it already is one (see ``_to_device``).

    From CUDA the copy lands in pinned memory without blocking, and the host waits for the stream once; the
    result is a fresh tensor, so the next batch never overwrites rows a request still holds.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return x
    if x.device.type == "cuda":
        host = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(x, non_blocking=True)
        torch.cuda.current_stream(x.device).synchronize()
        return host
    return x.to("cpu", torch.float32)
