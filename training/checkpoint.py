"""One checkpoint format for resume, evaluation, sampling and export.

A checkpoint is a ``torch.save`` of plain containers, tensors and numbers only, so it loads with
``torch.load(weights_only=True)`` (no code runs on load). It holds the state dict of the unwrapped flow (and
of its EMA copy when enabled), the optimizer state, the training position, the best validation bits/dim, the
resolved configuration as a plain dict, the data description (split indices, sizes, fingerprint) and the RNG
states. Writes are atomic (temporary file, fsync, rename): a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models import FLOWS, Flow
from training.config import ConfigError, ModelConfig, RunConfig, TrainConfig, config_from_dict, config_to_dict
from training.data import DataSplits

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the current code or configuration."""


@dataclass
class Checkpoint:
    """Everything saved by training.

    Attributes:
        config: the resolved training configuration.
        model: state dict of the unwrapped flow.
        ema: state dict of the EMA flow (None when ``optim.ema_decay == 0``).
        optimizer: optimizer state dict (None in an inference-only checkpoint).
        epoch: epochs completed before ``batch_in_epoch``.
        batch_in_epoch: batches already done in epoch ``epoch`` (> 0 only for an interrupted epoch).
        step: optimizer steps taken.
        best_val_bpd: best validation bits/dim so far (inf before the first evaluation).
        data: ``{"name", "kind", "shape", "sizes", "fingerprint", "indices"}``.
        rng: RNG states as uint8 tensors (``torch``, optionally ``cuda``).
        extra: free-form metadata (elapsed seconds, ...).
    """

    config: TrainConfig
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_val_bpd: float = float("inf")
    data: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def build_flow(model: ModelConfig, kind: str, shape: tuple[int, ...] | list[int]) -> Flow:
    """The flow of a model config for data of ``kind`` and item ``shape`` (the architecture comes from here only).

    Raises:
        ConfigError: the flow type does not fit the data (e.g. RealNVP on vectors, non-square images).
    """
    shape = tuple(int(s) for s in shape)
    spec = FLOWS.get(model.type)
    if spec is None:
        raise ConfigError(f"expected one of {', '.join(FLOWS)} for model.type, got {model.type!r}")
    if kind != spec.data_kind or not spec.fits(shape):
        got = f"dimension {shape[0]}" if kind == "vector" and len(shape) == 1 else f"{kind} data of shape {list(shape)}"
        hint = "" if kind == spec.data_kind else f"; use {_flow_for(kind)} for {kind} data"
        raise ConfigError(f"model.type = {model.type!r} needs {spec.accepts}, got {got}{hint}")
    try:
        return spec.build(shape, dataclasses.asdict(model))
    except ValueError as err:
        raise ConfigError(f"cannot build {model.type} for {kind}s of shape {list(shape)}: {err}") from None


def _flow_for(kind: str) -> str:
    return " or ".join(name for name, spec in FLOWS.items() if spec.data_kind == kind)


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(checkpoint.config),
        "model": _cpu(checkpoint.model),
        "ema": _cpu(checkpoint.ema) if checkpoint.ema is not None else None,
        "optimizer": _cpu(checkpoint.optimizer) if checkpoint.optimizer is not None else None,
        "epoch": checkpoint.epoch,
        "batch_in_epoch": checkpoint.batch_in_epoch,
        "step": checkpoint.step,
        "best_val_bpd": float(checkpoint.best_val_bpd),
        "data": checkpoint.data,
        "rng": checkpoint.rng,
        "extra": checkpoint.extra,
    }
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: missing, truncated or foreign file, or a configuration this code cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle refused by weights_only, ...
        raise CheckpointError(f"cannot read checkpoint '{path}': {err}") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"'{path}' is not a training checkpoint of format {FORMAT_VERSION}")
    try:
        config = config_from_dict(_per_device_batch(payload["config"], payload.get("extra") or {}))
    except ConfigError as err:
        raise CheckpointError(f"checkpoint '{path}' holds a configuration this code rejects: {err}") from None
    return Checkpoint(
        config=config,
        model=payload["model"],
        ema=payload["ema"],
        optimizer=payload["optimizer"],
        epoch=payload["epoch"],
        batch_in_epoch=payload["batch_in_epoch"],
        step=payload["step"],
        best_val_bpd=payload["best_val_bpd"],
        data=payload["data"],
        rng=payload["rng"],
        extra=payload["extra"],
    )


def _per_device_batch(raw: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The stored config with ``train.batch_size`` as the per-device batch it now means.

    Checkpoints written before ``train.batch_size`` meant the batch of each process held the global batch, split
    over the ``extra["world_size"]`` processes; they carry no ``extra["global_batch_size"]``. Their config is
    read with ``batch_size // world_size``, so a resumed multi-process run takes the steps it took before (a
    one-process checkpoint is unchanged either way).
    """
    world_size = int(extra.get("world_size", 1))
    if "global_batch_size" in extra or world_size <= 1:
        return raw
    train = dict(raw.get("train", {}))
    train["batch_size"] = int(train.get("batch_size", RunConfig.batch_size)) // world_size
    return {**raw, "train": train}


def load_flow(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> tuple[Flow, Checkpoint]:
    """The trained flow of a checkpoint, in eval mode (EMA weights when present and ``use_ema``).

    Returns:
        ``(flow, checkpoint)``.
    """
    checkpoint = load_checkpoint(path)
    flow = build_flow(checkpoint.config.model, checkpoint.data["kind"], checkpoint.data["shape"])
    state = checkpoint.ema if use_ema and checkpoint.ema is not None else checkpoint.model
    try:
        flow.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"weights of '{path}' do not fit the flow its config builds: {err}") from None
    return flow.to(device).eval(), checkpoint


def data_record(data: DataSplits) -> dict[str, Any]:
    """What a checkpoint records about its data: name, kind, item shape, split sizes and indices, fingerprint."""
    return {
        "name": data.name,
        "kind": data.kind,
        "shape": list(data.shape),
        "sizes": data.sizes,
        "fingerprint": data.fingerprint(),
        "indices": {name: index.clone() for name, index in data.indices.items()},
    }


def check_same_data(checkpoint: Checkpoint, data: DataSplits, where: str) -> None:
    """Refuse data that differs from the data the checkpoint was trained on (other items or other splits).

    Raises:
        CheckpointError: the fingerprints differ.
    """
    recorded = checkpoint.data.get("fingerprint")
    if recorded != data.fingerprint():
        raise CheckpointError(
            f"the data set '{data.name}' ({data.sizes}) differs from the one checkpoint '{where}' was trained on "
            f"({checkpoint.data.get('name')}, {checkpoint.data.get('sizes')}): other items or other splits"
        )


def _cpu(value: Any) -> Any:
    """Tensors moved to CPU inside nested dicts/lists (so a CUDA run's checkpoint loads anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu(v) for v in value)
    return value
