"""Training on a CUDA device (marked ``cuda``: skipped on hosts without one; ``bench/gpu_check.py`` runs them).

Bit-for-bit resume is checked on CPU (``conftest.image_config`` pins ``train.device = "cpu"``): cuDNN's
autotuning (``cudnn.benchmark``) may pick another algorithm in a resumed process. Here a resume takes the same
steps and stays finite.
"""

from __future__ import annotations

import math

import pytest
import torch
from tqdm import tqdm

from training import train
from training.checkpoint import load_checkpoint
from training.config import apply_overrides
from training.train import fit

from .conftest import image_config, poison_step

pytestmark = pytest.mark.cuda


def test_a_bf16_fit_on_cuda_trains_and_resumes_with_the_same_steps(tmp_path):
    options = ('train.device="cuda"', 'train.amp="bf16"', "train.sample_every=1", "optim.ema_decay=0.9")
    straight = load_checkpoint(fit(image_config(tmp_path / "a", "train.epochs=2", *options)))
    half = image_config(tmp_path / "b", "train.epochs=1", *options)
    resumed = load_checkpoint(fit(apply_overrides(half, ["train.epochs=2"]), resume=fit(half)))
    assert (resumed.epoch, resumed.step) == (straight.epoch, straight.step) == (2, 28)
    for checkpoint in (straight, resumed):
        assert all(torch.isfinite(v).all() for v in checkpoint.model.values())
        assert math.isfinite(checkpoint.best_val_bpd)
    assert (tmp_path / "a" / "run" / "best.pt").is_file() and (tmp_path / "a" / "run" / "samples").is_dir()


def test_steps_between_log_reads_never_synchronise_with_the_host(tmp_path):
    run = train.setup_run(
        image_config(tmp_path, 'train.device="cuda"', "train.log_every=100", "optim.ema_decay=0.9"), None
    )
    assert run.optimizer.defaults["fused"] and run.train_items.device.type == "cuda"
    batches, bar = train.epoch_batches(run), tqdm(disable=True)

    def step(index: int) -> None:
        result = train.train_step(run, batches[index])
        train.apply_update(run, result)
        train.advance(run, result, bar)

    for index in range(2):  # lazy initialisation, cuDNN autotuning, the optimizer's state
        step(index)
    torch.cuda.set_sync_debug_mode("error")  # from here any synchronising call raises
    try:
        for index in range(2, 5):
            step(index)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    reading = run.ledger.read()
    assert reading.epoch_steps == 5 and reading.new_skips == 0 and math.isfinite(reading.loss)


def test_a_non_finite_step_on_cuda_is_skipped_by_the_fused_kernel(tmp_path, monkeypatch, capsys):
    poison_step(monkeypatch, 2)
    fit(image_config(tmp_path, 'train.device="cuda"', "train.epochs=1", "train.log_every=5", "optim.ema_decay=0.9"))
    assert "step 2: non-finite loss nan" in capsys.readouterr().out
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.optimizer["state"][0]["step"].item() == checkpoint.step - 1
    assert all(torch.isfinite(v).all() for v in [*checkpoint.model.values(), *checkpoint.ema.values()])
