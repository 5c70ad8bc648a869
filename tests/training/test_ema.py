"""The EMA of the weights: the update on known tensors, an EMA of a trained flow, and resume with the EMA on."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from torch import nn

from models import RealNVP
from training import train
from training.checkpoint import build_flow, load_checkpoint, load_flow
from training.data import load_data
from training.ema import ema_decay, make_ema, update_ema
from training.evaluate import held_out_log_likelihoods, summarize
from training.train import Interrupted, fit

from .conftest import image_config


def batch_norm_net() -> nn.Module:
    """Parameters, float buffers (running mean and variance) and an integer one (``num_batches_tracked``)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))


def fill(module: nn.Module, value: float, count: int) -> None:
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.fill_(value if tensor.is_floating_point() else count)


def test_make_ema_is_a_frozen_eval_copy_that_shares_no_storage() -> None:
    net = batch_norm_net()
    ema = make_ema(net)  # type: ignore[arg-type]
    assert not ema.training and all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in net.parameters()) and net.training
    for key, value in net.state_dict().items():
        assert torch.equal(ema.state_dict()[key], value), key
    fill(net, 5.0, 9)
    assert all(not torch.equal(ema.state_dict()[key], value) for key, value in net.state_dict().items())


def test_update_moves_a_fraction_one_minus_decay_towards_the_weights() -> None:
    net = batch_norm_net()
    ema = make_ema(net)  # type: ignore[arg-type]
    fill(ema, 0.0, 3)
    fill(net, 1.0, 7)
    update_ema(ema, net, decay=0.9)  # type: ignore[arg-type]
    state = ema.state_dict()
    # ema <- 0.9 ema + 0.1 weights: parameters and float buffers (batch-norm statistics) alike
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(state[key], torch.full_like(state[key], 0.1), rtol=0, atol=1e-7, msg=key)
    assert state["1.num_batches_tracked"].item() == 7  # integers are copied
    update_ema(ema, net, decay=0.9)  # type: ignore[arg-type]
    for key in ("0.weight", "1.running_var"):
        torch.testing.assert_close(state[key], torch.full_like(state[key], 0.19), rtol=0, atol=1e-7, msg=key)
    assert all(torch.all(value == 1) for key, value in net.state_dict().items() if "num_batches" not in key)


def test_update_of_a_flow_after_training_steps_matches_the_formula() -> None:
    torch.manual_seed(0)
    flow = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=1)
    ema = make_ema(flow)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    before = {key: value.clone() for key, value in ema.state_dict().items()}
    for _ in range(3):  # moves the weights and the batch-norm running statistics of the flow
        loss = -flow.log_prob(torch.randint(0, 256, (16, 1, 8, 8)).float()).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    update_ema(ema, flow, decay=0.75)
    current = flow.state_dict()
    moved = 0
    for key, value in ema.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * before[key] + 0.25 * current[key], msg=key)
            moved += not torch.equal(before[key], current[key])
        else:
            assert torch.equal(value, current[key]), key
    assert moved > 10  # weights and running statistics did change, so the checks above tell the two apart
    assert current["transform.transforms.1.levels.0.transforms.0.net.in_norm.num_batches_tracked"].item() == 3


def test_decay_warms_up_then_stays_at_its_setting() -> None:
    # min(decay, (1 + t) / (10 + t)): early averages forget the initial weights fast
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay(10**6, 0.999) == 0.999
    decays = [ema_decay(step, 0.99) for step in range(2000)]
    assert decays == sorted(decays) and max(decays) == 0.99


def test_update_refuses_another_architecture() -> None:
    torch.manual_seed(0)
    flow = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=1)
    other = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=2)
    with pytest.raises(ValueError, match="expected an EMA of the same flow"):
        update_ema(make_ema(other), flow, decay=0.9)


@pytest.mark.slow
def test_ema_of_a_trained_flow_scores_close_to_it(tmp_path) -> None:
    # ~290 steps (16-image batches, 10 epochs) with a cosine schedule; decay 0.95 averages the last ~20 steps.
    config = image_config(
        tmp_path,
        "train.epochs=10",
        "train.batch_size=16",
        "train.sample_every=0",
        "train.log_every=100",
        'optim.schedule="cosine"',
        "optim.min_lr=1e-5",
        "optim.ema_decay=0.95",
    )
    last = fit(config)
    checkpoint = load_checkpoint(last)
    assert checkpoint.step == 29 * 10
    test_items = load_data(config.data).split("test")
    ema_flow, _ = load_flow(last)
    raw_flow, _ = load_flow(last, use_ema=False)
    untrained = build_flow(config.model, "image", (1, 8, 8))
    ema, raw, before = (
        summarize(held_out_log_likelihoods(flow, test_items), 64)["bits_per_dim"]
        for flow in (ema_flow, raw_flow, untrained)
    )
    assert raw < before - 1.0, (before, raw)  # it trained
    assert abs(ema - raw) < 0.1, (ema, raw)  # measured: 0.03 bits/dim
    # An average, not a copy: every parameter and batch-norm statistic differs from the raw flow's.
    averaged = [name for name, _ in raw_flow.named_parameters()] + [
        name for name, _ in raw_flow.named_buffers() if name.endswith(("running_mean", "running_var"))
    ]
    assert len(averaged) > 50
    assert all(not torch.equal(checkpoint.ema[name], checkpoint.model[name]) for name in averaged)
    # Validation measures both, with the standard bits/dim: the EMA as val_bpd, the raw weights as raw_val_bpd.
    val_items = load_data(config.data).split("val")
    last_epoch = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last_epoch["kind"] == "epoch" and last_epoch["epoch"] == 10
    figures = {
        key: summarize(held_out_log_likelihoods(flow, val_items, 1, config.train.eval_batch_size), 64)["bits_per_dim"]
        # in the channels-last layout the run validates in (another layout rounds differently in the last bits)
        for key, flow in (
            ("val_bpd", ema_flow.to(memory_format=torch.channels_last)),
            ("raw_val_bpd", raw_flow.to(memory_format=torch.channels_last)),
        )
    }
    assert figures["val_bpd"] != figures["raw_val_bpd"]
    for key, value in figures.items():
        assert last_epoch[key] == pytest.approx(value, rel=1e-9), key


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, stop_after: int) -> None:
    """Ctrl-C (a real SIGINT to this process) during optimizer step ``stop_after`` of the next ``fit``."""
    real_step = train.train_step
    calls = {"n": 0}

    def step_then_signal(run, index):
        result = real_step(run, index)
        calls["n"] += 1
        if calls["n"] == stop_after:
            signal.raise_signal(signal.SIGINT)  # the trainer's handler turns it into a stop after this step
        return result

    monkeypatch.setattr(train, "train_step", step_then_signal)


def test_resume_mid_epoch_with_ema_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    options = ("train.epochs=2", "train.sample_every=0", "train.log_every=100")
    straight = image_config(tmp_path / "straight", *options, "optim.ema_decay=0.9")
    expected = load_checkpoint(fit(straight))
    interrupted = image_config(tmp_path / "interrupted", *options, "optim.ema_decay=0.9")
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, stop_after=20)  # epoch 2, batch 6 of 14
        with pytest.raises(Interrupted, match="interrupted at epoch 2, batch 6/14"):
            fit(interrupted)
    saved_path = tmp_path / "interrupted" / "run" / "last.pt"
    saved = load_checkpoint(saved_path)
    assert (saved.epoch, saved.batch_in_epoch, saved.step) == (1, 6, 20)
    assert saved.ema is not None and any(not torch.equal(saved.ema[k], v) for k, v in saved.model.items())
    resumed = load_checkpoint(fit(interrupted, resume=saved_path))
    assert (resumed.epoch, resumed.step) == (expected.epoch, expected.step) == (2, 28)
    for name, got, want in (("model", resumed.model, expected.model), ("ema", resumed.ema, expected.ema)):
        assert got is not None and want is not None and got.keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(got[key], value), (name, key)
    for index, state in expected.optimizer["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed.optimizer["state"][index][key], value), (index, key)
    assert resumed.best_val_bpd == expected.best_val_bpd
