"""The same ``fit`` command under torchrun: 2 CPU processes (gloo), rank 0 writes, same quality as 1 process.

``train.batch_size`` is per device: 2 processes of 16 step with the global batch of one process of 32.
"""

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
    out_dir, probe_dir = tmp_path / "ddp", tmp_path / "probe"
    probe_dir.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "tests" / "training" / "ddp_probe.py"),
            "fit",
            "--config",
            str(config_path),
            "--set",
            f'out_dir="{out_dir}"',
            "--set",
            "train.batch_size=16",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**cli_env(), "PROBE_DIR": str(probe_dir)},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP x2 (gloo), batch 16 per device (32 per step)" in result.stdout, result.stdout
    # Each rank trained on batches of 16 (the per-device batch), 14 per epoch.
    for rank in (0, 1):
        probe = json.loads((probe_dir / f"rank{rank}.json").read_text())
        assert probe == {"world_size": 2, "batches": {"16": 3 * 14}}, (rank, probe)
    ddp = load_checkpoint(out_dir / "last.pt")
    assert ddp.extra["world_size"] == 2 and ddp.extra["global_batch_size"] == 32
    assert ddp.config.train.batch_size == 16
    # Global batch 32 = 2 x 16: the same number of optimizer steps per epoch as one process of 32.
    single_path = fit(config)
    single = load_checkpoint(single_path)
    assert (ddp.epoch, ddp.step) == (single.epoch, single.step) == (3, 3 * 14)
    # Only rank 0 wrote metrics: one record per step and per epoch.
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    kinds = [record["kind"] for record in records]
    assert kinds.count("epoch") == 3 and kinds.count("train") == 3 * 14
    assert {record["global_batch"] for record in records if record["kind"] == "epoch"} == {32}
    # Its checkpoint evaluates through the same code, to about the same bits/dim, far below the start.
    ddp_eval = evaluate_checkpoint(out_dir / "last.pt", split="test")
    single_eval = evaluate_checkpoint(single_path, split="test")
    first_val = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[0])["train_bpd"]
    assert ddp_eval["bits_per_dim"] < first_val - 1.0
    assert abs(ddp_eval["bits_per_dim"] - single_eval["bits_per_dim"]) < 0.01 * single_eval["bits_per_dim"], (
        ddp_eval,
        single_eval,
    )
