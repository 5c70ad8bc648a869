"""Interruption in a real process: Ctrl-C saves the position mid-epoch, SIGKILL loses at most one epoch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.config import apply_overrides
from training.train import fit

from .conftest import REPO, cli_env, image_config, run_cli, write_toml


def start_fit(config_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "training", "fit", "--config", str(config_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )


def wait_for_step(metrics: Path, process: subprocess.Popen, predicate, timeout: float = 60.0) -> dict:
    """Poll metrics.jsonl until a training record satisfies ``predicate``; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if metrics.exists():
            for line in reversed(metrics.read_text().splitlines()):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written
                if record["kind"] == "train":  # the latest step only: where training is now
                    if predicate(record):
                        return record
                    break
        time.sleep(0.005)
    raise AssertionError("training did not reach the expected step in time")


@pytest.mark.slow
def test_ctrl_c_saves_mid_epoch_and_resume_matches_an_uninterrupted_run(tmp_path):
    # Many epochs, so that the signal surely lands before the end; resuming then finishes the interrupted epoch.
    config = image_config(tmp_path, "train.epochs=50", "train.sample_every=0", "data.val_size=16", "data.test_size=16")
    process = start_fit(write_toml(config, tmp_path / "tiny.toml"))
    wait_for_step(tmp_path / "run" / "metrics.jsonl", process, lambda r: r["epoch"] >= 1 and r["step"] % 17 > 3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "checkpoint saved to" in err and "continue with --resume" in err
    stopped = load_checkpoint(tmp_path / "run" / "last.pt")
    assert stopped.epoch >= 1 and 1 <= stopped.batch_in_epoch <= 17, (stopped.epoch, stopped.batch_in_epoch)
    assert stopped.step == 17 * stopped.epoch + stopped.batch_in_epoch

    target = stopped.epoch + 1
    run_cli("fit", "--config", str(tmp_path / "tiny.toml"), "--resume", "--set", f"train.epochs={target}")
    resumed = load_checkpoint(tmp_path / "run" / "last.pt")
    reference = fit(apply_overrides(config, [f'out_dir="{tmp_path / "reference"}"', f"train.epochs={target}"]))
    expected = load_checkpoint(reference)
    assert (resumed.epoch, resumed.step) == (expected.epoch, expected.step) == (target, 17 * target)
    for key, value in expected.model.items():
        assert torch.equal(resumed.model[key], value), key


@pytest.mark.slow
def test_sigkill_mid_epoch_loses_at_most_that_epoch_and_never_corrupts(tmp_path):
    config = image_config(tmp_path, "train.epochs=50", "train.sample_every=0")
    config_path = write_toml(config, tmp_path / "tiny.toml")
    process = start_fit(config_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    record = wait_for_step(metrics, process, lambda r: r["epoch"] >= 2 and r["step"] % 14 > 5)
    process.kill()  # SIGKILL: no handler runs
    process.communicate(timeout=30)
    in_progress = max(
        json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if json.loads(line)["kind"] == "train"
    )
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")  # weights_only load succeeds
    assert checkpoint.batch_in_epoch == 0
    # "epoch" in a training record counts the epochs completed before it: at most the one in progress is lost.
    assert in_progress >= record["epoch"] >= 2
    assert checkpoint.epoch >= in_progress
    # Resuming from it finishes the run.
    target = checkpoint.epoch + 1
    result = run_cli("fit", "--config", str(config_path), "--resume", "--set", f"train.epochs={target}")
    assert json.loads(result.stdout.strip().splitlines()[-1])["checkpoint"].endswith("last.pt")
    final = load_checkpoint(tmp_path / "run" / "last.pt")
    assert final.epoch == target and final.step == 14 * target
