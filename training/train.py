"""The training loop: ``fit(config)`` reads top to bottom, like nanoGPT's ``train.py``.

One process, or one per device under ``torchrun`` (DistributedDataParallel; rank 0 evaluates and writes).
Each epoch is a seeded permutation of the training split (``DistributedSampler``, the same for a given seed and
epoch), each step's dequantization noise comes from a generator seeded by ``(seed, step, rank)``: a run resumed
from a checkpoint, even one written mid-epoch at Ctrl-C, takes exactly the steps the uninterrupted run would.
``train.batch_size`` is each process's batch: N processes take N × ``batch_size`` items per optimizer step.
A step reads nothing back from the device: its figures go to a :class:`~training.ledger.StepLedger`, read once
per log interval, and a non-finite step is skipped by the fused optimizer itself (see :func:`apply_update`).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from models import Flow
from training.checkpoint import (
    Checkpoint,
    CheckpointError,
    build_flow,
    check_same_data,
    data_record,
    load_checkpoint,
    save_checkpoint,
)
from training.config import ConfigError, TrainConfig, config_to_dict
from training.data import DataSplits, load_data
from training.ema import ema_decay, make_ema, update_ema
from training.evaluate import held_out_log_likelihoods, summarize
from training.ledger import Reading, StepLedger
from training.plots import save_image_grid, save_vector_samples
from training.runtime import MetricsLog, StopFlag, agree_on_skip, agree_on_stop, fits_on_gpu, setup_distributed

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


class TrainingError(RuntimeError):
    """Training cannot go on (repeated NaN/Inf losses, ...)."""


class Interrupted(Exception):  # noqa: N818 - a signal, not an error
    """Training stopped at a signal (Ctrl-C, SIGTERM) after saving a checkpoint."""


class LogProbObjective(nn.Module):
    """``forward(x, noise) = flow.log_prob(x, noise)``: what DistributedDataParallel wraps."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        """``(B, *shape), (B, *shape) | None -> (B,)`` log-likelihoods in nats."""
        return self.flow.log_prob(x, noise=noise)


def fit(config: TrainConfig, resume: str | Path | None = None) -> Path:
    """Train the flow of ``config``; returns the path of the last checkpoint.

    Args:
        config: the resolved configuration.
        resume: a checkpoint to continue from (same data order, optimizer state and position).

    Raises:
        Interrupted: after Ctrl-C/SIGTERM, once the checkpoint is saved.
        TrainingError: ``train.max_bad_steps`` consecutive non-finite losses.
    """
    run = setup_run(config, resume)
    with StopFlag() as stop:
        while run.epoch < config.train.epochs:
            batches = epoch_batches(run)  # (batches, B) indices into the training split, on its device
            run.flow.train()
            run.ledger.start_epoch()
            bar = tqdm(
                total=run.batches_per_epoch,
                initial=run.batch_in_epoch,
                desc=f"epoch {run.epoch + 1}/{config.train.epochs}",
                disable=not (run.master and config.train.progress),
                leave=False,
            )
            while run.batch_in_epoch < run.batches_per_epoch:
                result = train_step(run, batches[run.batch_in_epoch])
                apply_update(run, result)
                advance(run, result, bar)
                # A single process stops at the step it was signalled; a group agrees at the next read.
                reads = at_read_point(run) or (stop.requested and not run.distributed)
                if reads and read_ledger(run, stop.requested, bar):
                    interrupt(run)
            bar.close()
            end_of_epoch(run)
    finish(run)
    return run.last_path


# --------------------------------------------------------------------------------------------------- the run
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
    run.flow.load_state_dict(checkpoint.model)
    run.optimizer.load_state_dict(checkpoint.optimizer)
    if run.ema is not None:
        run.ema.load_state_dict(checkpoint.ema)
    torch.set_rng_state(checkpoint.rng["torch"])
    run.epoch, run.batch_in_epoch, run.step = checkpoint.epoch, checkpoint.batch_in_epoch, checkpoint.step
    run.best_val_bpd, run.elapsed_before = checkpoint.best_val_bpd, checkpoint.extra.get("elapsed_s", 0.0)
    if checkpoint.extra.get("world_size", run.world_size) != run.world_size and run.master:
        print(
            f"warning: resuming a {checkpoint.extra['world_size']}-process run with {run.world_size} "
            f"processes: the data order and the global batch ({run.global_batch} items per step) differ from "
            "the original run's"
        )


# --------------------------------------------------------------------------------------------------- steps
def epoch_batches(run: Run) -> Tensor:
    """This epoch's ``(batches, B)`` indices into the training split (the same for a given seed and epoch).

    Moved to the split's device once per epoch (pinned, asynchronous), so no step copies indices from pageable
    host memory, which would wait for the device.
    """
    run.sampler.set_epoch(run.epoch)
    order = torch.tensor(list(run.sampler))[: run.batches_per_epoch * run.per_device_batch]
    order = order.view(run.batches_per_epoch, run.per_device_batch)
    if run.train_items.device.type == "cuda":
        order = order.pin_memory().to(run.train_items.device, non_blocking=True)
    return order


@dataclass(frozen=True)
class StepResult:
    """One step's figures, still on the device (read back once per log interval, by the ledger).

    Attributes:
        found_inf: ``()`` float, 1 when the loss or gradient norm was non-finite in some process, else 0.
        loss: ``()`` the loss (bits/dim plus the weight-norm penalty).
        nll_bpd: ``()`` training bits/dim.
        grad_norm: ``()`` gradient norm before clipping.
        lr: the step's learning rate.
    """

    found_inf: Tensor
    loss: Tensor
    nll_bpd: Tensor
    grad_norm: Tensor
    lr: float


def train_step(run: Run, index: Tensor) -> StepResult:
    """Forward, backward and clipping of one batch; the update itself is :func:`apply_update`'s.

    Args:
        run: the run.
        index: ``(B,)`` rows of the training split, on its device.
    """
    config = run.config
    lr = get_lr(run.step, config, run.total_steps) * run.lr_scale
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    x = get_batch(run.train_items, index, run.device)  # (B, *shape) float
    noise = dequantization_noise(x, run.data.kind, config.seed, run.step, run.rank, run.world_size)
    with torch.autocast(run.device.type, dtype=torch.bfloat16) if run.use_bf16 else nullcontext():
        log_prob = run.model(x, noise)  # (B,) nats
    nll_bpd = -log_prob.float().mean() / (run.flow.dim * math.log(2.0))
    loss = nll_bpd + config.optim.weight_norm_l2 * weight_norm_penalty(run.flow)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(run.flow.parameters(), config.optim.grad_clip or math.inf)
    found_inf = torch.logical_not(torch.isfinite(loss) & torch.isfinite(grad_norm)).float()  # on the device
    agree_on_skip(found_inf, run.distributed)
    return StepResult(found_inf=found_inf, loss=loss.detach(), nll_bpd=nll_bpd.detach(), grad_norm=grad_norm, lr=lr)


def apply_update(run: Run, result: StepResult) -> None:
    """The optimizer (and EMA) update, unless the step was non-finite: a non-finite loss never reaches the weights.

    With the fused Adam of a CUDA run the decision never leaves the device: ``found_inf`` is handed to the
    kernel (the protocol ``torch.amp.GradScaler`` uses), which then changes neither weights, moments nor step
    counts, and the EMA interpolates with weight 0. The foreach Adam of a CPU run is not told about
    ``found_inf``; there Python reads the flag, which waits for nothing (CPU operations have already run).
    """
    decay = ema_decay(run.step, run.config.optim.ema_decay)
    if run.optimizer.defaults.get("fused"):
        run.optimizer.found_inf = result.found_inf  # type: ignore[attr-defined]
        run.optimizer.step()
        if run.ema is not None:
            update_ema(run.ema, run.flow, decay, skip=result.found_inf)
    elif not bool(result.found_inf):
        run.optimizer.step()
        if run.ema is not None:
            update_ema(run.ema, run.flow, decay)


def advance(run: Run, result: StepResult, bar: tqdm) -> None:
    """Count the step (skipped or not) and fold its figures into the ledger; reads nothing back."""
    run.ledger.add(result.loss, result.nll_bpd, result.grad_norm, result.found_inf, run.step)
    run.batch_in_epoch += 1
    run.step += 1
    bar.update(1)


def at_read_point(run: Run) -> bool:
    """Whether the ledger is read after this step: every ``train.log_every`` steps and at the end of an epoch.

    Every process reads at the same steps, so their collectives (the agreed stop flag) match.
    """
    return run.step % run.config.train.log_every == 0 or run.batch_in_epoch == run.batches_per_epoch


def read_ledger(run: Run, stop_requested: bool, bar: tqdm) -> bool:
    """Read the ledger back (the one device → host transfer of a log interval): report skipped steps, log.

    Returns:
        Whether to stop now (agreed by every process).

    Raises:
        TrainingError: ``train.max_bad_steps`` consecutive skipped steps.
    """
    reading = run.ledger.read(agree_on_stop(stop_requested, run.distributed, run.device))
    run.epoch_bpd, run.epoch_steps = reading.epoch_bpd, reading.epoch_steps
    if reading.last_skip is not None:
        report_skipped(run, reading)
    if run.step % run.config.train.log_every == 0:
        if reading.loss is not None:
            bar.set_postfix(loss=f"{reading.loss:.4f}", bpd=f"{reading.train_bpd:.4f}")
            run.metrics.write(
                kind="train", step=run.step, epoch=run.epoch, loss=reading.loss, train_bpd=reading.train_bpd,
                lr=get_lr(run.step - 1, run.config, run.total_steps) * run.lr_scale, grad_norm=reading.grad_norm,
                skipped=reading.skipped_in_interval,
            )  # fmt: skip
        run.ledger.start_interval()
    return reading.stop if run.distributed else stop_requested


def report_skipped(run: Run, reading: Reading) -> None:
    """Print the last skipped step; stop after ``train.max_bad_steps`` consecutive ones.

    Raises:
        TrainingError: the longest run of consecutive skipped steps reached ``train.max_bad_steps``.
    """
    assert reading.last_skip is not None
    step, loss, grad_norm = reading.last_skip
    message = (
        f"step {step}: non-finite loss {loss:.4g} or gradient norm {grad_norm:.4g}; update skipped, weights unchanged"
    )
    if reading.new_skips > 1:
        message += f" ({reading.new_skips} steps skipped since the last report)"
    if run.master:
        tqdm.write(message)
    if reading.longest_skip_run >= run.config.train.max_bad_steps:
        raise TrainingError(
            f"{message}. {reading.longest_skip_run} consecutive bad steps: stopping. Lower optim.lr or raise "
            f"optim.warmup_steps; last good checkpoint: {run.last_path}"
        )


def weight_norm_penalty(flow: Flow) -> Tensor:
    """The paper's ``Σ g²`` over the weight-norm scales, as one fused reduction."""
    scales = flow.weight_norm_scales()
    if not scales:
        return torch.zeros((), device=next(flow.parameters()).device)
    return torch.stack(torch._foreach_norm([g.float() for g in scales])).square().sum()


def interrupt(run: Run) -> None:
    """Save the position mid-epoch and stop (every process agreed to).

    Raises:
        Interrupted: always, once rank 0 has saved.
    """
    if run.master:
        save_checkpoint(run.last_path, run.checkpoint())
    if run.distributed:
        dist.barrier()  # no rank leaves while rank 0 still writes
    raise Interrupted(
        f"interrupted at epoch {run.epoch + 1}, batch {run.batch_in_epoch}/{run.batches_per_epoch}; "
        f"checkpoint saved to {run.last_path}"
    )


def end_of_epoch(run: Run) -> None:
    """Validation by the standard bits/dim, samples, checkpoints (rank 0 writes).

    The epoch's training figure is the ledger's, read at the epoch's last step (:func:`at_read_point`).
    """
    run.epoch, run.batch_in_epoch = run.epoch + 1, 0
    train_bpd, run.epoch_bpd, run.epoch_steps = run.epoch_bpd, None, 0
    if run.master:
        eval_flow = run.ema if run.ema is not None else run.flow
        val = validate(run, eval_flow)
        record = dict(
            kind="epoch", epoch=run.epoch, step=run.step, val_bpd=val["bits_per_dim"], val_nll_nats=val["nll_nats"],
            train_bpd=train_bpd, elapsed_s=run.elapsed(),
            lr=get_lr(run.step - 1, run.config, run.total_steps) * run.lr_scale, global_batch=run.global_batch,
        )  # fmt: skip
        if run.ema is not None:  # both, so a lagging or broken average shows (the better one is exported)
            record["raw_val_bpd"] = validate(run, run.flow)["bits_per_dim"]
        best = min(record["val_bpd"], record.get("raw_val_bpd", math.inf))
        is_best = best < run.best_val_bpd
        run.best_val_bpd = min(run.best_val_bpd, best)
        run.metrics.write(**record)
        train = f"train {train_bpd:.4f}" if train_bpd is not None else "train (no steps since resuming)"
        raw = f", raw weights {record['raw_val_bpd']:.4f}" if "raw_val_bpd" in record else ""
        print(
            f"epoch {run.epoch}/{run.config.train.epochs}: {train} bits/dim, val {val['bits_per_dim']:.4f} "
            f"bits/dim{raw} ({val['nll_nats']:.4f} nats), {record['elapsed_s']:.0f} s",
            flush=True,
        )
        every = run.config.train.sample_every
        if every and run.epoch % every == 0:
            samples_path = Path(run.config.out_dir) / "samples" / f"epoch_{run.epoch:04d}.png"
            write_samples(eval_flow, run.config, run.data, samples_path)
        checkpoint = run.checkpoint()
        save_checkpoint(run.last_path, checkpoint)
        if is_best:
            save_checkpoint(run.best_path, checkpoint)
    if run.distributed:
        dist.barrier()


def validate(run: Run, flow: Flow) -> dict[str, float]:
    """The standard bits/dim of the validation split: one seeded dequantization draw per image, every epoch alike."""
    return summarize(
        held_out_log_likelihoods(flow, run.val_items, 1, run.config.train.eval_batch_size, run.device), run.flow.dim
    )


def finish(run: Run) -> None:
    """Flush the metrics; leave the process group once every rank is done."""
    run.metrics.close()
    if run.distributed:
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------- helpers
def get_lr(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to ``optim.lr``, then constant or cosine decay to ``optim.min_lr``."""
    optim = config.optim
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))


def get_batch(items: Tensor, index: Tensor, device: torch.device) -> Tensor:
    """Rows ``index`` of a split as float32 on ``device``: ``(B, *shape)`` (pixels stay on the 0–255 scale)."""
    batch = items[index.to(items.device)]
    if device.type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device).float()


def dequantization_noise(x: Tensor, kind: str, seed: int, step: int, rank: int, world_size: int) -> Tensor | None:
    """``U[0, 1)`` noise of ``x``'s shape for images (None for vectors), a function of (seed, step, rank) only."""
    if kind != "image":
        return None
    generator = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + step * world_size + rank)
    return torch.rand(x.shape, generator=generator, device=x.device)


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


@torch.no_grad()
def write_samples(flow: Flow, config: TrainConfig, data: DataSplits, path: Path) -> Path | None:
    """A grid (images) or plot (vectors) of samples drawn from fixed latents, so epochs compare."""
    device = next(flow.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    was_training = flow.training
    flow.eval()
    try:
        samples = flow.sample(config.train.sample_count, config.train.sample_temperature, generator=generator)
    finally:
        flow.train(was_training)
    if data.kind == "image":
        return save_image_grid(samples, path, scale=max(1, 64 // data.shape[-1]))
    return save_vector_samples(samples, path, reference=data.split("val"), title=data.name)
