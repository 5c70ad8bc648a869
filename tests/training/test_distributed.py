"""The same ``fit`` command under torchrun: 2 CPU processes (gloo), rank 0 writes, same quality as 1 process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from training.checkpoint import load_checkpoint
from training.evaluate import evaluate_checkpoint
from training.train import fit

from .conftest import REPO, cli_env, image_config, write_toml


@pytest.mark.slow
def test_torchrun_two_processes_trains_like_one(tmp_path):
    config = image_config(tmp_path, "train.epochs=3", "train.sample_every=0", 'train.device="cpu"')
    config_path = write_toml(config, tmp_path / "tiny.toml")
    out_dir = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "training",
            "fit",
            "--config",
            str(config_path),
            "--set",
            f'out_dir="{out_dir}"',
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=cli_env(),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = load_checkpoint(out_dir / "last.pt")
    assert ddp.extra["world_size"] == 2
    # Global batch 32 = 2 x 16: the same number of optimizer steps per epoch as one process.
    single_path = fit(config)
    single = load_checkpoint(single_path)
    assert (ddp.epoch, ddp.step) == (single.epoch, single.step) == (3, 3 * 14)
    # Only rank 0 wrote metrics: one record per step and per epoch.
    kinds = [json.loads(line)["kind"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("epoch") == 3 and kinds.count("train") == 3 * 14
    # Its checkpoint evaluates through the same code, to about the same bits/dim, far below the start.
    ddp_eval = evaluate_checkpoint(out_dir / "last.pt", split="test")
    single_eval = evaluate_checkpoint(single_path, split="test")
    first_val = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[0])["train_bpd"]
    assert ddp_eval["bits_per_dim"] < first_val - 1.0
    assert abs(ddp_eval["bits_per_dim"] - single_eval["bits_per_dim"]) < 0.01 * single_eval["bits_per_dim"], (
        ddp_eval,
        single_eval,
    )
