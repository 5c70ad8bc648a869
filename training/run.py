"""A training run's state and how it is built: processes, data, flow, optimizer, EMA, resume.

:func:`setup_run` builds a :class:`Run` from a config (and a checkpoint to resume); ``training/train.py`` drives
it step by step. ``train.batch_size`` is each process's batch: N processes take N × ``batch_size`` items per
optimizer step, and ``optim.lr_scaling`` says how the learning rate follows (:func:`lr_scale`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from models import Flow
from models.nets import LEGACY_OUT_CONV
from training.checkpoint import Checkpoint, CheckpointError, build_flow, check_same_data, data_record, load_checkpoint
from training.config import ConfigError, TrainConfig, config_to_dict
from training.data import DataSplits, load_data
from training.ema import make_ema
from training.ledger import StepLedger
from training.runtime import MetricsLog, fits_on_gpu, setup_distributed
from training.schedule import Rewarm, get_lr, resume_rewarm

# Keys that may change when resuming (they do not change which steps are taken).
RESUMABLE_KEYS = frozenset(
    {
        "out_dir",
        "train.epochs",
        "train.device",
        "train.amp",
        "train.num_threads",
        "train.log_every",
        "train.sample_every",
        "train.sample_count",
        "train.sample_temperature",
        "train.max_bad_steps",
        "train.progress",
        "train.eval_batch_size",
    }
)


class LogProbObjective(nn.Module):
    """``forward(x, noise) = flow.log_prob(x, noise)``: what DistributedDataParallel wraps."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        """``(B, *shape), (B, *shape) | None -> (B,)`` log-likelihoods in nats."""
        return self.flow.log_prob(x, noise=noise)


@dataclass(eq=False)
class Run:
    """Everything a training run carries from step to step (built by :func:`setup_run`)."""

    config: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    use_bf16: bool
    data: DataSplits
    train_items: Tensor
    val_items: Tensor
    sampler: DistributedSampler
    per_device_batch: int
    batches_per_epoch: int
    flow: Flow
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: Flow | None
    metrics: MetricsLog
    ledger: StepLedger
    distributed: bool = False
    lr_scale: float = 1.0
    rewarm: Rewarm | None = None
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best_val_bpd: float = math.inf
    elapsed_before: float = 0.0
    epoch_bpd: float | None = None
    epoch_steps: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def master(self) -> bool:
        """Rank 0: the process that evaluates and writes."""
        return self.rank == 0

    @property
    def global_batch(self) -> int:
        """Items per optimizer step, over all processes."""
        return self.per_device_batch * self.world_size

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.batches_per_epoch * self.config.train.epochs

    @property
    def last_path(self) -> Path:
        """The checkpoint written at every epoch end and at Ctrl-C."""
        return Path(self.config.out_dir) / "last.pt"

    @property
    def best_path(self) -> Path:
        """The checkpoint of the best validation bits/dim."""
        return Path(self.config.out_dir) / "best.pt"

    def elapsed(self) -> float:
        """Training seconds, resumed runs included."""
        return self.elapsed_before + time.monotonic() - self.started

    def checkpoint(self) -> Checkpoint:
        """The run's state as a checkpoint (resume, evaluation and export all read this one format)."""
        return Checkpoint(
            config=self.config,
            model=self.flow.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            step=self.step,
            best_val_bpd=self.best_val_bpd,
            data=data_record(self.data),
            rng={"torch": torch.get_rng_state()},
            extra={
                "elapsed_s": self.elapsed(),
                "world_size": self.world_size,
                "global_batch_size": self.global_batch,  # also marks train.batch_size as per device
                "lr_scale": self.lr_scale,
                "lr_rewarm": None if self.rewarm is None else [self.rewarm.start, self.rewarm.lr],
                "num_parameters": self.flow.num_parameters(),
            },
        )


def setup_run(config: TrainConfig, resume: str | Path | None) -> Run:
    """Processes, device, data, flow, optimizer and EMA; the position of ``resume`` when given.

    Raises:
        ConfigError: the training split is smaller than one global batch.
        CheckpointError: ``resume`` does not fit ``config`` (see :func:`check_resumable`).
    """
    rank, world_size, device, distributed = setup_distributed(config)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = load_data(config.data)
    train_items, val_items = data.split("train"), data.split("val")
    if device.type == "cuda" and fits_on_gpu(train_items, device):
        train_items = train_items.to(device)
    batches_per_epoch, sampler = _batching(config, len(train_items), rank, world_size)
    torch.manual_seed(config.seed)  # the architecture and its initial weights come from the config alone
    flow = build_flow(config.model, data.kind, data.shape).to(device)
    if data.kind == "image":
        # oneDNN's convolutions mostly run channels-last faster: up to 20 % off a mnist step (docs/training.md).
        flow = flow.to(memory_format=torch.channels_last)
    model: nn.Module = LogProbObjective(flow)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    run = Run(
        config=config,
        rank=rank,
        world_size=world_size,
        device=device,
        use_bf16=use_bf16(config.train.amp, device, data.kind),
        data=data,
        train_items=train_items,
        val_items=val_items,
        sampler=sampler,
        per_device_batch=config.train.batch_size,
        batches_per_epoch=batches_per_epoch,
        flow=flow,
        model=model,
        optimizer=make_optimizer(flow, config, device),
        ema=make_ema(flow) if config.optim.ema_decay > 0 else None,
        metrics=MetricsLog(Path(config.out_dir) / "metrics.jsonl", enabled=rank == 0),
        ledger=StepLedger(device),
        distributed=distributed,
        lr_scale=lr_scale(config.optim.lr_scaling, world_size),
    )
    if resume is not None:
        _restore(run, resume)
    if run.master:
        group = f"DDP x{world_size} ({dist.get_backend()})" if distributed else "x1"
        print(
            f"training {config.model.type} ({flow.num_parameters():,} parameters) on {data.name} "
            f"{data.sizes} on {device}{' bf16' if run.use_bf16 else ''} {group}, batch {run.per_device_batch} "
            f"per device ({run.global_batch} per step), peak lr {config.optim.lr * run.lr_scale:g} "
            f"(lr_scaling {config.optim.lr_scaling}), {run.total_steps} steps"
        )
    return run


def make_optimizer(flow: Flow, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam, fused on CUDA.

    Fused: one kernel for the whole update instead of several per parameter tensor, and one that skips a
    non-finite step on the device (``found_inf``, see :func:`apply_update`). CPU runs keep the foreach
    implementation their checkpoints were trained with (fused CPU Adam rounds differently).
    """
    return torch.optim.Adam(
        flow.parameters(), lr=config.optim.lr, betas=config.optim.betas, fused=device.type == "cuda"
    )


def lr_scale(rule: str, world_size: int) -> float:
    """The factor on the whole learning-rate schedule for ``world_size`` processes (``optim.lr_scaling``).

    ``optim.lr`` is the learning rate of one process at batch ``train.batch_size``; N processes step with N times
    that batch. ``linear`` (Goyal et al. 2017, for SGD) multiplies by N, ``sqrt`` (the square-root rule that
    Malladi et al. 2022 derive for Adam) by √N, ``none`` leaves it.
    """
    return {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[rule]


def use_bf16(amp: str, device: torch.device, kind: str) -> bool:
    """Whether the forward pass runs under bf16 autocast: ``bf16``, or ``auto`` for image flows on CUDA.

    ``auto`` leaves vector flows in fp32: their MLPs are a few thousand multiply-adds per item, launch-bound at
    any precision, and bf16's 8-bit mantissa would only blur their tanh scales and log-determinants.
    """
    return amp == "bf16" or (amp == "auto" and device.type == "cuda" and kind == "image")


def _batching(config: TrainConfig, size: int, rank: int, world_size: int) -> tuple[int, DistributedSampler]:
    """``(batches per epoch, sampler)`` for a training split of ``size`` items and a per-device batch."""
    per_device, global_batch = config.train.batch_size, config.train.batch_size * world_size
    sampler = DistributedSampler(
        range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed, drop_last=True
    )
    batches_per_epoch = len(sampler) // per_device
    if batches_per_epoch == 0:
        processes = f" ({world_size} processes x {per_device})" if world_size > 1 else ""
        raise ConfigError(
            f"the training split has {size} items, fewer than one batch of {global_batch}{processes}; "
            "lower train.batch_size"
        )
    return batches_per_epoch, sampler


def _restore(run: Run, resume: str | Path) -> None:
    """Load weights, optimizer, EMA, RNG and position from ``resume`` into ``run``."""
    checkpoint = load_checkpoint(resume)
    check_resumable(checkpoint, run.config, run.data, str(resume))
    if any(key.endswith(LEGACY_OUT_CONV + "_v") for key in checkpoint.model):
        raise CheckpointError(
            f"cannot resume '{resume}': it was trained with weight-normed s/t output convolutions, which this "
            "version replaced by plain ones (models/nets.py); its weights still load for evaluate, sample and "
            "export, but its optimizer state does not fit"
        )
    run.flow.load_state_dict(checkpoint.model)
    run.optimizer.load_state_dict(checkpoint.optimizer)
    if run.ema is not None:
        run.ema.load_state_dict(checkpoint.ema)
    torch.set_rng_state(checkpoint.rng["torch"])
    run.epoch, run.batch_in_epoch, run.step = checkpoint.epoch, checkpoint.batch_in_epoch, checkpoint.step
    run.best_val_bpd, run.elapsed_before = checkpoint.best_val_bpd, checkpoint.extra.get("elapsed_s", 0.0)
    _resume_schedule(run, checkpoint)
    if checkpoint.extra.get("world_size", run.world_size) != run.world_size and run.master:
        print(
            f"warning: resuming a {checkpoint.extra['world_size']}-process run with {run.world_size} "
            f"processes: the data order and the global batch ({run.global_batch} items per step) differ from "
            "the original run's"
        )


def check_resumable(checkpoint: Checkpoint, config: TrainConfig, data: DataSplits, where: str) -> None:
    """Refuse to resume with another architecture, optimizer, data or data order.

    Raises:
        CheckpointError: a setting outside ``RESUMABLE_KEYS`` differs, the data changed, or no optimizer state.
    """
    old, new = _flatten(config_to_dict(checkpoint.config)), _flatten(config_to_dict(config))
    changed = [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and key not in RESUMABLE_KEYS
    ]
    if changed:
        raise CheckpointError(
            f"cannot resume '{where}' with a different configuration ({'; '.join(changed)}); "
            f"only {', '.join(sorted(RESUMABLE_KEYS))} may change"
        )
    if checkpoint.optimizer is None:
        raise CheckpointError(f"checkpoint '{where}' has no optimizer state to resume from")
    check_same_data(checkpoint, data, where)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resume_schedule(run: Run, checkpoint: Checkpoint) -> None:
    """Ramp the learning rate when the resume changed the schedule (``training.schedule``); say so."""
    old_total = run.batches_per_epoch * checkpoint.config.train.epochs
    before = get_lr(run.step, checkpoint.config, old_total) * checkpoint.extra.get("lr_scale", 1.0)
    after = get_lr(run.step, run.config, run.total_steps) * run.lr_scale
    kept = checkpoint.extra.get("lr_rewarm")
    last_lr = float(checkpoint.optimizer["param_groups"][0]["lr"])
    run.rewarm = resume_rewarm(
        run.step, last_lr, before, after, None if kept is None else Rewarm(int(kept[0]), float(kept[1])), run.config
    )
    if run.master and run.rewarm is not None and run.rewarm.start == run.step:
        print(
            f"the schedule changed on resume (lr {before:.3g} -> {after:.3g} at step {run.step}): ramping from the "
            f"checkpoint's {last_lr:.3g} over {run.config.optim.warmup_steps} steps (optim.warmup_steps)"
        )
