"""The training loop: ``fit(config)`` reads top to bottom, like nanoGPT's ``train.py``.

One process, or one per device under ``torchrun`` (DistributedDataParallel; rank 0 evaluates and writes).
Each epoch is a seeded permutation of the training split (``DistributedSampler``, the same for a given seed and
epoch), each step's dequantization noise comes from a generator seeded by ``(seed, step, rank)``: a run resumed
from a checkpoint, even one written mid-epoch at Ctrl-C, takes exactly the steps the uninterrupted run would.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
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
from training.evaluate import held_out_log_likelihoods, summarize
from training.plots import save_image_grid, save_vector_samples
from training.runtime import MetricsLog, StopFlag, agree, choose_device, fits_on_gpu, setup_distributed

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
    # ---- processes, device, precision
    rank, world_size, local_rank = setup_distributed(config)
    master = rank == 0
    device = choose_device(config.train.device, local_rank)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    use_bf16 = config.train.amp == "bf16" or (config.train.amp == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out_dir = Path(config.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    # ---- data: whole splits as tensors; the training split goes to the GPU when it fits
    data = load_data(config.data)
    train_items = data.split("train")
    val_items = data.split("val")
    if device.type == "cuda" and fits_on_gpu(train_items, device):
        train_items = train_items.to(device)
    per_rank_batch = config.train.batch_size // world_size
    if per_rank_batch * world_size != config.train.batch_size:
        raise ConfigError(
            f"train.batch_size = {config.train.batch_size} is not divisible by the {world_size} processes"
        )
    sampler = DistributedSampler(
        range(len(train_items)), num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed, drop_last=True
    )
    batches_per_epoch = len(sampler) // per_rank_batch
    if batches_per_epoch == 0:
        raise ConfigError(
            f"the training split has {len(train_items)} items, fewer than one batch of "
            f"{config.train.batch_size}; lower train.batch_size"
        )
    total_steps = batches_per_epoch * config.train.epochs

    # ---- model, optimizer, EMA (the architecture comes from the config alone)
    torch.manual_seed(config.seed)
    flow = build_flow(config.model, data.kind, data.shape).to(device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=config.optim.lr, betas=config.optim.betas)
    ema = make_ema(flow) if config.optim.ema_decay > 0 else None
    epoch, batch_in_epoch, step, best_val_bpd, elapsed = 0, 0, 0, math.inf, 0.0
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        check_resumable(checkpoint, config, data, str(resume))
        flow.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
        if ema is not None:
            ema.load_state_dict(checkpoint.ema)
        torch.set_rng_state(checkpoint.rng["torch"])
        epoch, batch_in_epoch, step = checkpoint.epoch, checkpoint.batch_in_epoch, checkpoint.step
        best_val_bpd, elapsed = checkpoint.best_val_bpd, checkpoint.extra.get("elapsed_s", 0.0)
        if checkpoint.extra.get("world_size", world_size) != world_size and master:
            print(
                f"warning: resuming a {checkpoint.extra['world_size']}-process run with {world_size} "
                "processes: the data order differs from the original run"
            )
    model: nn.Module = LogProbObjective(flow)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    scales = flow.weight_norm_scales()
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=master)

    def make_checkpoint() -> Checkpoint:
        rng = {"torch": torch.get_rng_state()}
        return Checkpoint(
            config=config,
            model=flow.state_dict(),
            ema=ema.state_dict() if ema is not None else None,
            optimizer=optimizer.state_dict(),
            epoch=epoch,
            batch_in_epoch=batch_in_epoch,
            step=step,
            best_val_bpd=best_val_bpd,
            data=data_record(data),
            rng=rng,
            extra={
                "elapsed_s": elapsed + time.monotonic() - started,
                "world_size": world_size,
                "num_parameters": flow.num_parameters(),
            },
        )

    # ---- the loop
    stop = StopFlag()
    started = time.monotonic()
    lr = get_lr(step, config, total_steps)
    if master:
        print(
            f"training {config.model.type} ({flow.num_parameters():,} parameters) on {data.name} "
            f"{data.sizes} on {device}{' bf16' if use_bf16 else ''} x{world_size}, {total_steps} steps"
        )
    with stop:
        while epoch < config.train.epochs:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler))[: batches_per_epoch * per_rank_batch]
            batches = order.view(batches_per_epoch, per_rank_batch)  # (batches, B) indices into the split
            flow.train()
            bar = tqdm(
                total=batches_per_epoch,
                initial=batch_in_epoch,
                desc=f"epoch {epoch + 1}/{config.train.epochs}",
                disable=not (master and config.train.progress),
                leave=False,
            )
            epoch_bpd, epoch_count, bad_steps = 0.0, 0, 0
            while batch_in_epoch < batches_per_epoch:
                lr = get_lr(step, config, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = get_batch(train_items, batches[batch_in_epoch], device)  # (B, *shape) float
                noise = dequantization_noise(x, data.kind, config.seed, step, rank, world_size)
                with torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext():
                    log_prob = model(x, noise)  # (B,) nats
                nll_bpd = -log_prob.float().mean() / (flow.dim * math.log(2.0))
                penalty = sum((g.float() ** 2).sum() for g in scales) if scales else torch.zeros((), device=device)
                loss = nll_bpd + config.optim.weight_norm_l2 * penalty
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(flow.parameters(), config.optim.grad_clip or math.inf)
                finite, stop_now = agree(
                    bool(torch.isfinite(loss) and torch.isfinite(grad_norm)), stop.requested, world_size, device
                )
                if finite:
                    optimizer.step()  # a non-finite loss never reaches the weights
                    if ema is not None:
                        update_ema(ema, flow, config.optim.ema_decay)
                    bad_steps = 0
                else:
                    optimizer.zero_grad(set_to_none=True)
                    bad_steps += 1
                    message = (
                        f"step {step}: non-finite loss {loss.item():.4g} or gradient norm "
                        f"{grad_norm.item():.4g}; update skipped, weights unchanged"
                    )
                    if master:
                        tqdm.write(message)
                    if bad_steps >= config.train.max_bad_steps:
                        raise TrainingError(
                            f"{message}. {bad_steps} consecutive bad steps: stopping. Lower "
                            f"optim.lr or raise optim.warmup_steps; last good checkpoint: "
                            f"{last_path}"
                        )
                batch_in_epoch += 1
                step += 1
                if finite:
                    epoch_bpd, epoch_count = epoch_bpd + nll_bpd.item(), epoch_count + 1
                    bar.update(1)
                    if step % config.train.log_every == 0:
                        bar.set_postfix(loss=f"{loss.item():.4f}", bpd=f"{nll_bpd.item():.4f}")
                        metrics.write(
                            kind="train",
                            step=step,
                            epoch=epoch,
                            loss=loss.item(),
                            train_bpd=nll_bpd.item(),
                            lr=lr,
                            grad_norm=grad_norm.item(),
                        )
                if stop_now:
                    if master:
                        save_checkpoint(last_path, make_checkpoint())
                    raise Interrupted(
                        f"interrupted at epoch {epoch + 1}, batch {batch_in_epoch}/"
                        f"{batches_per_epoch}; checkpoint saved to {last_path}"
                    )
            bar.close()

            # ---- end of epoch: validation, samples, checkpoint (rank 0 writes)
            epoch, batch_in_epoch = epoch + 1, 0
            if master:
                eval_flow = ema if ema is not None else flow
                # the standard measure (one seeded dequantization draw per image), the same draws every epoch
                val_ll = held_out_log_likelihoods(eval_flow, val_items, 1, config.train.eval_batch_size, device)
                val = summarize(val_ll, flow.dim)
                is_best = val["bits_per_dim"] < best_val_bpd
                best_val_bpd = min(best_val_bpd, val["bits_per_dim"])
                record = dict(
                    kind="epoch",
                    epoch=epoch,
                    step=step,
                    val_bpd=val["bits_per_dim"],
                    val_nll_nats=val["nll_nats"],
                    train_bpd=epoch_bpd / max(epoch_count, 1),
                    lr=lr,
                    elapsed_s=elapsed + time.monotonic() - started,
                )
                metrics.write(**record)
                print(
                    f"epoch {epoch}/{config.train.epochs}: train {record['train_bpd']:.4f} bits/dim, "
                    f"val {val['bits_per_dim']:.4f} bits/dim ({val['nll_nats']:.4f} nats), "
                    f"{record['elapsed_s']:.0f} s",
                    flush=True,
                )
                if config.train.sample_every and epoch % config.train.sample_every == 0:
                    write_samples(eval_flow, config, data, out_dir / "samples" / f"epoch_{epoch:04d}.png")
                checkpoint = make_checkpoint()
                save_checkpoint(last_path, checkpoint)
                if is_best:
                    save_checkpoint(best_path, checkpoint)
            if world_size > 1:
                dist.barrier()
    metrics.close()
    if world_size > 1:
        dist.destroy_process_group()
    return last_path


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


def make_ema(flow: Flow) -> Flow:
    """A frozen copy of ``flow`` whose weights track an exponential moving average."""
    ema = copy.deepcopy(flow).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: Flow, flow: Flow, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · flow`` for parameters and float buffers (batch-norm statistics).

    Averaging the batch-norm statistics as well matters: running statistics of the current weights do not fit
    the averaged weights, and a flow's eval-mode likelihood can then diverge.
    """
    for ema_p, p in zip(ema.parameters(), flow.parameters(), strict=True):
        ema_p.lerp_(p, 1.0 - decay)
    for ema_b, b in zip(ema.buffers(), flow.buffers(), strict=True):
        if ema_b.is_floating_point():
            ema_b.lerp_(b, 1.0 - decay)
        else:
            ema_b.copy_(b)


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
