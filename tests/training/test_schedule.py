"""The learning-rate schedule, and the ramp a resume takes when it changed the schedule."""

from __future__ import annotations

import json

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.config import apply_overrides, load_config
from training.schedule import Rewarm, get_lr, resume_rewarm, scheduled_lr
from training.train import Interrupted, fit

from .conftest import vector_config
from .test_ema import interrupt_at_step

COSINE = load_config(None, ['optim.schedule="cosine"', "optim.lr=1e-3", "optim.min_lr=1e-5", "optim.warmup_steps=10"])


def test_warm_up_then_cosine_by_hand():
    assert get_lr(0, COSINE, 110) == pytest.approx(1e-4)
    assert get_lr(9, COSINE, 110) == pytest.approx(1e-3)
    assert get_lr(60, COSINE, 110) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way down the cosine
    assert get_lr(110, COSINE, 110) == pytest.approx(1e-5)


def test_the_ramp_runs_linearly_from_the_last_lr_to_the_schedule():
    rewarm = Rewarm(start=100, lr=1e-5)
    target = [get_lr(step, COSINE, 200) * 2.0 for step in range(100, 112)]
    lrs = [scheduled_lr(step, COSINE, 200, 2.0, rewarm) for step in range(100, 112)]
    for i in range(10):
        assert lrs[i] == pytest.approx(1e-5 + (target[i] - 1e-5) * (i + 1) / 10)
    assert lrs[9:] == pytest.approx(target[9:])  # the schedule itself from the ramp's last step on
    assert scheduled_lr(99, COSINE, 200, 2.0, rewarm) == pytest.approx(get_lr(99, COSINE, 200) * 2.0)


def test_a_resume_ramps_only_when_the_schedule_changed():
    kept = Rewarm(start=5, lr=1e-4)
    assert (
        resume_rewarm(50, 3e-4, 5e-4, 5e-4 * (1 + 1e-3), kept, COSINE) is kept
    )  # unchanged: keep the ramp in progress
    assert resume_rewarm(50, 3e-4, 5e-4, 5e-4, None, COSINE) is None
    assert resume_rewarm(50, 1e-5, 1e-5, 5e-4, kept, COSINE) == Rewarm(start=50, lr=1e-5)
    no_warmup = apply_overrides(COSINE, ["optim.warmup_steps=0"])
    assert resume_rewarm(50, 1e-5, 1e-5, 5e-4, None, no_warmup) is None


def lrs_of(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["lr"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_resuming_a_finished_cosine_with_more_epochs_ramps_instead_of_jumping(tmp_path, capsys):
    config = vector_config(
        tmp_path, 'optim.schedule="cosine"', "optim.min_lr=1e-5", "optim.warmup_steps=5", "train.epochs=2"
    )
    last = fit(config)
    first = lrs_of(tmp_path / "run")
    steps = len(first)
    assert first[-1] < 3e-3 / 40  # near the end of the cosine
    longer = apply_overrides(config, ["train.epochs=4"])
    last = fit(longer, resume=last)
    assert "the schedule changed on resume" in capsys.readouterr().out
    resumed = lrs_of(tmp_path / "run")[steps:]
    schedule = [get_lr(step, longer, 2 * steps) * 1.0 for step in range(steps, 2 * steps)]
    assert schedule[0] > 20 * first[-1]  # what the resume used to jump to
    for i in range(5):
        assert resumed[i] == pytest.approx(first[-1] + (schedule[i] - first[-1]) * (i + 1) / 5)
    assert resumed[5:] == pytest.approx(schedule[5:])
    assert load_checkpoint(last).extra["lr_rewarm"] == [steps, pytest.approx(first[-1])]


def test_a_resume_interrupted_mid_ramp_takes_the_steps_of_an_uninterrupted_one(tmp_path, monkeypatch):
    options = ('optim.schedule="cosine"', "optim.min_lr=1e-5", "optim.warmup_steps=5", "train.epochs=2")
    first = fit(vector_config(tmp_path / "first", *options))  # 8 steps per epoch
    longer = ["train.epochs=4", "train.log_every=1"]
    straight = apply_overrides(vector_config(tmp_path / "straight", *options), longer)
    expected = load_checkpoint(fit(straight, resume=first))
    interrupted = apply_overrides(vector_config(tmp_path / "interrupted", *options), longer)
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, stop_after=3)  # step 19 of 32: inside the ramp (steps 16-20)
        with pytest.raises(Interrupted):
            fit(interrupted, resume=first)
    resumed = load_checkpoint(fit(interrupted, resume=tmp_path / "interrupted" / "run" / "last.pt"))
    assert (
        resumed.extra["lr_rewarm"]
        == expected.extra["lr_rewarm"]
        == [16, pytest.approx(lrs_of(tmp_path / "first" / "run")[-1])]
    )
    assert lrs_of(tmp_path / "interrupted" / "run") == lrs_of(tmp_path / "straight" / "run")
    for key, value in expected.model.items():
        assert torch.equal(resumed.model[key], value), key
