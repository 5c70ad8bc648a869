"""The training loop in-process: it trains, writes what it promises, resumes exactly, survives bad losses."""

from __future__ import annotations

import json
import math

import pytest
import torch

from training.checkpoint import CheckpointError, build_flow, load_checkpoint, load_flow
from training.config import apply_overrides
from training.evaluate import evaluate_checkpoint, held_out_log_likelihoods, log_likelihoods, summarize
from training.run import LogProbObjective
from training.train import TrainingError, fit

from .conftest import image_config, vector_config


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_image_fit_trains_and_writes_checkpoints_metrics_and_grids(tmp_path):
    config = image_config(tmp_path, "train.epochs=3")
    last = fit(config)
    run = tmp_path / "run"
    assert last == run / "last.pt" and (run / "best.pt").is_file()
    # Loadable without running code, with the whole state needed to resume.
    raw = torch.load(last, weights_only=True)
    assert raw["epoch"] == 3 and raw["batch_in_epoch"] == 0
    assert raw["config"]["model"]["mid_channels"] == 4
    assert set(raw["data"]["indices"]) == {"train", "val", "test"}
    assert raw["optimizer"]["state"] and isinstance(raw["rng"]["torch"], torch.Tensor)
    epochs = records(run, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert len(records(run, "train")) == raw["step"]  # log_every = 1
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"epoch_{i:04d}.png" for i in (1, 2, 3)]
    # It learned: validation bits/dim well below the untrained flow's.
    untrained = build_flow(config.model, "image", (1, 8, 8))
    flow, checkpoint = load_flow(last)
    data_val = __import__("training.data", fromlist=["load_data"]).load_data(config.data).split("val")
    before = summarize(log_likelihoods(untrained, data_val), 64)["bits_per_dim"]
    after = summarize(log_likelihoods(flow, data_val), 64)["bits_per_dim"]
    assert after < before - 0.5, (before, after)
    # Validation is the standard measure: one seeded dequantization draw per image (in the channels-last layout the
    # run trains and validates in: another layout rounds differently in the last bits).
    flow = flow.to(memory_format=torch.channels_last)
    standard = held_out_log_likelihoods(flow, data_val, 1, config.train.eval_batch_size)
    assert epochs[-1]["val_bpd"] == pytest.approx(summarize(standard, 64)["bits_per_dim"], rel=1e-9)
    assert checkpoint.best_val_bpd == min(r["val_bpd"] for r in epochs)


def test_vector_fit_with_ema_and_cosine_schedule(tmp_path):
    config = vector_config(
        tmp_path, "optim.ema_decay=0.9", 'optim.schedule="cosine"', "optim.min_lr=1e-4", "train.epochs=3"
    )
    fit(config)
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.ema is not None
    assert not torch.equal(
        checkpoint.ema["transform.transforms.0.net.s.0.weight"],
        checkpoint.model["transform.transforms.0.net.s.0.weight"],
    )
    lrs = [r["lr"] for r in records(tmp_path / "run", "train")]
    assert lrs[0] == pytest.approx(3e-3 / 5) and lrs[4] == pytest.approx(3e-3)  # warm-up
    assert lrs[-1] < lrs[5] and lrs[-1] >= 1e-4  # cosine decay towards min_lr
    result = evaluate_checkpoint(tmp_path / "run" / "last.pt", split="test")
    assert math.isfinite(result["bits_per_dim"]) and result["n"] == 100


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_takes_exactly_the_steps_of_an_uninterrupted_run(tmp_path):
    straight = image_config(tmp_path / "a", "train.epochs=2", "train.sample_every=0")
    fit(straight)
    first_half = image_config(tmp_path / "b", "train.epochs=1", "train.sample_every=0")
    fit(first_half)
    second_half = apply_overrides(first_half, ["train.epochs=2"])
    fit(second_half, resume=tmp_path / "b" / "run" / "last.pt")
    a, b = load_checkpoint(tmp_path / "a" / "run" / "last.pt"), load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert (a.epoch, a.step) == (b.epoch, b.step) == (2, 2 * 14)
    assert_same_state(a.model, b.model)
    for key in a.optimizer["state"]:
        assert_same_state(a.optimizer["state"][key], b.optimizer["state"][key])
    assert len(records(tmp_path / "b" / "run", "epoch")) == 2


def test_resume_refuses_another_architecture_or_data(tmp_path):
    config = vector_config(tmp_path, "train.epochs=1")
    last = fit(config)
    with pytest.raises(CheckpointError, match=r"model.hidden_dim: 16 -> 32"):
        fit(apply_overrides(config, ["model.hidden_dim=32", "train.epochs=2"]), resume=last)
    with pytest.raises(CheckpointError, match=r"data.split_seed: 0 -> 1"):
        fit(apply_overrides(config, ["data.split_seed=1", "train.epochs=2"]), resume=last)
    with pytest.raises(CheckpointError, match="does not exist"):
        fit(config, resume=tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "corrupt.pt")


def test_resume_refuses_a_checkpoint_with_weight_normed_output_convolutions(tmp_path):
    config = image_config(tmp_path, "train.epochs=1", "train.sample_every=0")
    last = fit(config)
    checkpoint = torch.load(last, weights_only=False)
    for key in [k for k in checkpoint["model"] if k.endswith("out_conv.weight")]:
        weight = checkpoint["model"].pop(key)
        checkpoint["model"][key + "_v"] = weight + 1.0
        checkpoint["model"][key + "_g"] = weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.save(checkpoint, tmp_path / "legacy.pt")
    with pytest.raises(CheckpointError, match="weight-normed s/t output convolutions"):
        fit(apply_overrides(config, ["train.epochs=2"]), resume=tmp_path / "legacy.pt")
    flow, _ = load_flow(tmp_path / "legacy.pt", use_ema=False)  # evaluation and export still read it
    assert torch.isfinite(flow.eval().log_prob(torch.zeros(2, *flow.event_shape))).all()


def test_a_nan_loss_skips_the_update_and_repeated_nans_stop(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    forward = LogProbObjective.forward

    def sometimes_nan(self, x, noise):
        calls["n"] += 1
        out = forward(self, x, noise)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(LogProbObjective, "forward", sometimes_nan)
    config = vector_config(tmp_path, "train.epochs=1")
    fit(config)
    out = capsys.readouterr().out + capsys.readouterr().err
    assert "step 2: non-finite loss nan" in out and "update skipped, weights unchanged" in out
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in checkpoint.model.values())
    assert checkpoint.optimizer["state"][0]["step"].item() == checkpoint.step - 1  # one update skipped

    monkeypatch.setattr(LogProbObjective, "forward", lambda self, x, noise: forward(self, x, noise) * math.inf)
    with pytest.raises(TrainingError, match="4 consecutive bad steps: stopping"):
        fit(apply_overrides(config, [f'out_dir="{tmp_path / "inf"}"', "train.max_bad_steps=4"]))
    assert not (tmp_path / "inf" / "last.pt").exists()


def test_batch_size_must_fit_the_training_split(tmp_path):
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="fewer than one batch of 1000"):
        fit(vector_config(tmp_path, "train.batch_size=1000"))


def test_importance_weighted_evaluation_is_deterministic(tmp_path):
    last = fit(image_config(tmp_path, "train.epochs=1", "train.sample_every=0"))
    first = evaluate_checkpoint(last, split="test", samples=3)
    second = evaluate_checkpoint(last, split="test", samples=3)
    assert first == second
    assert first["samples"] == 3 and math.isfinite(first["iw_bits_per_dim"])
    assert first["iw_bits_per_dim"] != first["bits_per_dim"]
    # The k-draw estimate is a log-mean-exp: it can only exceed the mean log-likelihood of its own draws, and
    # with one draw it is exactly a uniformly-dequantized likelihood, close to the bin-centre figure.
    one = evaluate_checkpoint(last, split="test", samples=1)
    assert abs(one["iw_bits_per_dim"] - one["bits_per_dim"]) < 0.2
