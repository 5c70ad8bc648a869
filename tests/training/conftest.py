"""Shared helpers of the training tests: tiny data sets and configs that train in a second or two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import TrainConfig, apply_overrides
from training.run import LogProbObjective

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine is shared: keep each test on one core and restore the thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_images(n: int = 600, size: int = 8, seed: int = 0) -> np.ndarray:
    """Structured uint8 images ``(n, 1, size, size)``: a bright bar on a dark background, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, 1, size, size))
    for i in range(n):
        k = rng.integers(0, size)
        if i % 2:
            images[i, 0, k, :] = rng.integers(180, 256, size=size)
        else:
            images[i, 0, :, k] = rng.integers(180, 256, size=size)
    return images.astype(np.uint8)


def image_config(tmp_path: Path, *overrides: str, n: int = 600) -> TrainConfig:
    """A RealNVP on ``n`` 8×8 images written to ``tmp_path/images.npy`` (the ``array`` data set)."""
    path = tmp_path / "images.npy"
    if not path.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        np.save(path, tiny_images(n))
    base = [
        'name="tiny_images"',
        "seed=0",
        f'out_dir="{tmp_path / "run"}"',
        'data.name="array"',
        f'data.path="{path}"',
        "data.val_size=64",
        "data.test_size=64",
        'model.type="RealNVP"',
        "model.num_scales=2",
        "model.mid_channels=4",
        "model.num_blocks=1",
        "optim.lr=1e-3",
        "optim.warmup_steps=5",
        'optim.schedule="constant"',
        "train.epochs=2",
        "train.batch_size=32",
        "train.eval_batch_size=64",
        'train.device="cpu"',  # on every host: resumes are compared bit for bit (cuDNN autotuning is not)
        "train.num_threads=1",
        "train.log_every=1",
        "train.sample_every=1",
        "train.sample_count=16",
        "train.progress=false",
    ]
    return apply_overrides(TrainConfig(), base + list(overrides))


def vector_config(tmp_path: Path, *overrides: str) -> TrainConfig:
    """A small NVPNet on 600 two-moons points."""
    base = [
        'name="tiny_moons"',
        "seed=0",
        f'out_dir="{tmp_path / "run"}"',
        'data.name="moons"',
        "data.num_samples=600",
        "data.val_size=100",
        "data.test_size=100",
        'model.type="NVPNet"',
        "model.hidden_dim=16",
        "model.depth=4",
        "optim.lr=3e-3",
        "optim.warmup_steps=5",
        'optim.schedule="constant"',
        "train.epochs=2",
        "train.batch_size=50",
        "train.eval_batch_size=100",
        'train.device="cpu"',
        "train.num_threads=1",
        "train.log_every=1",
        "train.sample_every=0",
        "train.progress=false",
    ]
    return apply_overrides(TrainConfig(), base + list(overrides))


def write_toml(config: TrainConfig, path: Path) -> Path:
    """Write a config as TOML (strings, numbers, booleans and lists only)."""
    from training.config import config_to_dict

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines, tables = [], []
    for key, v in config_to_dict(config).items():
        if isinstance(v, dict):
            tables.append(f"\n[{key}]\n" + "\n".join(f"{k} = {value(x)}" for k, x in v.items()))
        else:
            lines.append(f"{key} = {value(v)}")
    path.write_text("\n".join(lines) + "\n" + "\n".join(tables) + "\n")
    return path


def cli_env() -> dict[str, str]:
    """Environment of a ``python -m training`` subprocess: the repo on the path, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m training ARGS`` and return the finished process (stdout/stderr captured as text)."""
    result = subprocess.run(
        [sys.executable, "-m", "training", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def poison_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the training objective return NaN at ``step`` (0-based) only: one non-finite step to skip."""
    forward, calls = LogProbObjective.forward, {"n": 0}

    def nan_at_step(self: LogProbObjective, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        calls["n"] += 1
        out = forward(self, x, noise)
        return out * float("nan") if calls["n"] == step + 1 else out

    monkeypatch.setattr(LogProbObjective, "forward", nan_at_step)
