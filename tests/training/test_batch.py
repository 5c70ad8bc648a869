"""``train.batch_size`` is per device: how the learning rate follows, and checkpoints of the global-batch days.

The per-device batch each torchrun process sees is checked in ``test_distributed.py``.
"""

from __future__ import annotations

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.config import apply_overrides
from training.run import lr_scale
from training.train import fit

from .conftest import vector_config


@pytest.mark.parametrize(("rule", "world_size", "factor"), [("none", 8, 1.0), ("linear", 8, 8.0), ("sqrt", 4, 2.0)])
def test_lr_scaling_multiplies_the_schedule_by_a_function_of_the_process_count(rule, world_size, factor):
    assert lr_scale(rule, world_size) == factor
    assert lr_scale(rule, 1) == 1.0  # one process: the schedule as written, whatever the rule


def rewrite(path, edit):
    """Edit a checkpoint's raw payload in place (what an older version of the code would have written)."""
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


def as_written_before_per_device_batches(payload, world_size):
    del payload["extra"]["global_batch_size"], payload["extra"]["lr_scale"]
    payload["extra"]["world_size"] = world_size
    del payload["config"]["optim"]["lr_scaling"]


def test_a_global_batch_checkpoint_of_several_processes_loads_with_its_per_device_batch(tmp_path):
    last = fit(vector_config(tmp_path, "train.epochs=1"))
    assert load_checkpoint(last).extra["global_batch_size"] == 50
    rewrite(last, lambda payload: as_written_before_per_device_batches(payload, world_size=2))
    # A 2-process run of global batch 50 took batches of 25 per process: that is what its config now says.
    legacy = load_checkpoint(last)
    assert legacy.config.train.batch_size == 25 and legacy.config.optim.lr_scaling == "none"


def test_a_one_process_checkpoint_of_the_old_format_resumes_bit_identically(tmp_path):
    straight = load_checkpoint(fit(vector_config(tmp_path / "a", "train.epochs=2", "optim.ema_decay=0.9")))
    half = vector_config(tmp_path / "b", "train.epochs=1", "optim.ema_decay=0.9")
    last = fit(half)
    rewrite(last, lambda payload: as_written_before_per_device_batches(payload, world_size=1))
    assert load_checkpoint(last).config.train.batch_size == 50
    resumed = load_checkpoint(fit(apply_overrides(half, ["train.epochs=2"]), resume=last))
    assert (resumed.step, resumed.extra["global_batch_size"]) == (straight.step, 50)
    for name in ("model", "ema"):
        want, got = getattr(straight, name), getattr(resumed, name)
        assert all(torch.equal(got[key], value) for key, value in want.items()), name
