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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from models import Flow
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.data import DataSplits
from training.ema import ema_decay, update_ema
from training.evaluate import held_out_log_likelihoods, summarize
from training.ledger import Reading
from training.plots import save_image_grid, save_vector_samples
from training.run import Run, setup_run
from training.runtime import StopFlag, agree_on_skip, agree_on_stop
from training.schedule import scheduled_lr


class TrainingError(RuntimeError):
    """Training cannot go on (repeated NaN/Inf losses, ...)."""


class Interrupted(Exception):  # noqa: N818 - a signal, not an error
    """Training stopped at a signal (Ctrl-C, SIGTERM) after saving a checkpoint."""


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
    lr = run_lr(run, run.step)
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
                lr=run_lr(run, run.step - 1), grad_norm=reading.grad_norm,
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
    """The paper's ``Σ g²``, as ``Σ w²`` of the output convolutions (:meth:`Flow.l2_penalized_weights`), fused."""
    scales = flow.l2_penalized_weights()
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
            lr=run_lr(run, run.step - 1), global_batch=run.global_batch,
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
def run_lr(run: Run, step: int) -> float:
    """The learning rate of the run's optimizer step ``step`` (see ``training.schedule``)."""
    return scheduled_lr(step, run.config, run.total_steps, run.lr_scale, run.rewarm)


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
