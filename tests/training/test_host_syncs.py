"""Steps read nothing back from the device: the ledger, the masked (fused) update, the EMA's skip, the counts.

On this CPU-only machine the fused-Adam path of a CUDA run is forced onto the CPU (``make_optimizer`` patched):
fused CPU Adam honours ``found_inf`` like the CUDA kernel. Device reads are counted at the dispatcher
(``aten::_local_scalar_dense``, what ``.item()``, ``bool()``, ``float()`` end in) and at ``Tensor.tolist``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from training import run as training_run
from training import train
from training.checkpoint import load_checkpoint
from training.config import apply_overrides
from training.ema import make_ema, update_ema
from training.ledger import StepLedger
from training.run import LogProbObjective
from training.train import TrainingError, fit

from .conftest import poison_step, vector_config


def fused_adam(flow, config, device):
    return torch.optim.Adam(flow.parameters(), lr=config.optim.lr, betas=config.optim.betas, fused=True)


def test_the_ledger_sums_finite_steps_only_and_tracks_runs_of_skipped_ones():
    ledger = StepLedger(torch.device("cpu"))
    ledger.start_epoch()
    steps = [(2.0, 1.5, 3.0, 0.0), (math.nan, math.nan, math.nan, 1.0), (math.inf, 9.0, 1.0, 1.0), (4.0, 2.5, 5.0, 0)]
    for index, (loss, bpd, norm, found_inf) in enumerate(steps):
        ledger.add(torch.tensor(loss), torch.tensor(bpd), torch.tensor(norm), torch.tensor(float(found_inf)), index)
    reading = ledger.read()
    assert (reading.loss, reading.train_bpd, reading.grad_norm) == (3.0, 2.0, 4.0)
    assert (reading.epoch_bpd, reading.epoch_steps, reading.skipped_in_interval) == (2.0, 2, 2)
    assert (reading.longest_skip_run, reading.new_skips) == (2, 2)
    assert reading.last_skip == (2, math.inf, 1.0) and reading.stop is False
    # A read restarts the per-read counts; the interval sums wait for start_interval, the epoch's for start_epoch.
    again = ledger.read()
    assert again.new_skips == 0 and again.last_skip is None and again.skipped_in_interval == 2
    ledger.start_interval()
    assert ledger.read().loss is None and ledger.read().epoch_steps == 2
    assert ledger.read(stop_flag=torch.ones(1)).stop is True


def test_a_skipped_step_leaves_the_ema_as_it_was_even_with_nan_statistics():
    flow = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = make_ema(flow)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(1.0)
        flow[1].running_mean.fill_(math.nan)  # what a non-finite forward pass in train mode leaves behind
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, flow, 0.9, skip=torch.tensor(1.0))
    assert all(torch.equal(before[k], v) for k, v in ema.state_dict().items() if k != "1.num_batches_tracked")
    # Not skipped: the same interpolation as the plain float weight.
    with torch.no_grad():
        flow[1].running_mean.fill_(0.5)
    expected = make_ema(flow)
    expected.load_state_dict(ema.state_dict())
    update_ema(ema, flow, 0.9, skip=torch.tensor(0.0))
    update_ema(expected, flow, 0.9)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(ema.state_dict()[key], value, rtol=0, atol=1e-7)


class DeviceReads(TorchDispatchMode):
    """Counts ``aten::_local_scalar_dense`` (every scalar read from a tensor) under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_a_fused_run_reads_the_device_once_per_log_interval_and_still_skips_non_finite_steps(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(training_run, "make_optimizer", fused_adam)
    poison_step(monkeypatch, 4)
    reads, lists, at_step = DeviceReads(), {"n": 0}, []
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        lists["n"] += 1
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    real_step = train.train_step

    def counted_step(run, index):
        at_step.append(reads.count + lists["n"])  # device reads so far, at the start of each step
        return real_step(run, index)

    monkeypatch.setattr(train, "train_step", counted_step)
    config = vector_config(tmp_path, "train.epochs=2", "train.log_every=3", "optim.ema_decay=0.9")
    with reads:
        fit(config)
    # 8 steps per epoch; reads after steps 3, 6, 8 (epoch end), 9, 12, 15, 16: one transfer each, none in between.
    per_step = [b - a for a, b in itertools.pairwise(at_step)]
    within_epoch = {k: n for k, n in enumerate(per_step, start=1) if k % 8 != 0}
    assert within_epoch == {k: int(k % 3 == 0) for k in within_epoch}, per_step
    out = capsys.readouterr().out
    assert "step 4: non-finite loss nan" in out and "update skipped, weights unchanged" in out
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.step == 16 and checkpoint.optimizer["state"][0]["step"].item() == 15  # one update skipped
    assert all(torch.isfinite(v).all() for v in [*checkpoint.model.values(), *checkpoint.ema.values()])


def test_repeated_non_finite_steps_stop_at_the_next_read_with_nothing_applied(tmp_path, monkeypatch):
    monkeypatch.setattr(training_run, "make_optimizer", fused_adam)
    forward = LogProbObjective.forward
    monkeypatch.setattr(LogProbObjective, "forward", lambda self, x, noise: forward(self, x, noise) * math.inf)
    config = vector_config(tmp_path, "train.log_every=3", "train.max_bad_steps=2")
    seen = []
    real_apply = train.apply_update

    def kept_apply(run, result):
        seen.append(run)
        real_apply(run, result)

    monkeypatch.setattr(train, "apply_update", kept_apply)
    with pytest.raises(TrainingError, match="3 consecutive bad steps: stopping"):
        fit(config)
    run = seen[-1]
    assert run.step == 3  # max_bad_steps = 2 was reached at step 2 and acted on at the read after step 3
    for state in run.optimizer.state.values():  # the fused kernel skipped all three: no step counted, no moments
        assert state["step"].item() == 0 and not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    untouched = apply_overrides(config, [f'out_dir="{tmp_path / "fresh"}"'])
    torch.manual_seed(untouched.seed)
    fresh = training_run.build_flow(untouched.model, "vector", (2,))
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), run.flow.parameters(), strict=True))
    assert not (tmp_path / "run" / "last.pt").exists()
