"""The run-time around the training loop: processes and devices, signals, the metrics log.

Kept apart from ``training/train.py`` so the loop itself reads top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from training.config import ConfigError, TrainConfig


def setup_distributed(config: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """``(rank, world_size, device, distributed)``; joins the process group when started by ``torchrun``.

    Each process takes its device first (``cuda:LOCAL_RANK``), then joins the group bound to it
    (``device_id``), so NCCL never creates a context on GPU 0 for every rank. A ``torchrun`` job of one process
    joins a group as well (``distributed`` is True): it runs DistributedDataParallel and NCCL like a larger one.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(config.train.device, local_rank, world_size)
    if world_size == 1 and not launched_by_torchrun():
        return 0, 1, device, False
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size(), device, True


def launched_by_torchrun() -> bool:
    """Whether this process is a worker of ``torchrun`` (which sets ``TORCHELASTIC_RUN_ID`` and ``MASTER_ADDR``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_ADDR" in os.environ


def choose_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """CUDA when present (``auto``), else CPU; ``cuda`` means this process's GPU under torchrun.

    Raises:
        ConfigError: CUDA asked for but absent, or one GPU index for every process of a torchrun job.
    """
    if name.startswith("cuda:") and world_size > 1:
        raise ConfigError(
            f"train.device = {name!r} would put all {world_size} torchrun processes on one GPU; expected 'cuda' "
            "or 'auto' (each process takes GPU LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = '{name}' but no CUDA device is available; use 'auto' or 'cpu'")
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def fits_on_gpu(items: Tensor, device: torch.device) -> bool:
    """Whether a split takes under a quarter of the free GPU memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return items.numel() * items.element_size() < free // 4


def agree_on_skip(found_inf: Tensor, distributed: bool) -> Tensor:
    """Make every process skip a step that any process found non-finite: ``found_inf`` all-reduced by MAX.

    Args:
        found_inf: ``()`` float on the training device, 1 for a non-finite loss or gradient norm, else 0;
            reduced in place (a collective queued on the device: nothing is read back).
        distributed: whether the process belongs to a group (else ``found_inf`` is returned as it is).

    Returns:
        ``found_inf``.
    """
    if distributed:
        dist.all_reduce(found_inf, op=dist.ReduceOp.MAX)
    return found_inf


def agree_on_stop(requested: bool, distributed: bool, device: torch.device) -> Tensor | None:
    """The stop flag every process agrees on, ``(1,)`` float on ``device`` (1 if any process was signalled).

    Called at the same steps by every process (the ledger's reads). A device-side fill, not a tensor built from
    a Python list (which would be a pageable host-to-device copy); the caller reads it back together with the
    ledger, in one transfer. None for a single process, which decides on its own.
    """
    if not distributed:
        return None
    flag = torch.full((1,), 1.0 if requested else 0.0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop at the end of the current step (a second Ctrl-C kills)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (and TensorBoard scalars when tensorboard is installed)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = path
        self.writer = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                pass

    def write(self, **record: Any) -> None:
        """Append one record; numbers also go to TensorBoard under ``kind/name``."""
        if not self.enabled:
            return
        record["time"] = time.time()
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float) and key not in ("time",):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()
