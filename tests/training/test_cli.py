"""The command line in-process: exit codes and error messages a user sees."""

from __future__ import annotations

import json

import pytest
import torch

from training.__main__ import main
from training.checkpoint import load_checkpoint

from .conftest import vector_config, write_toml


def test_fit_then_resume_from_a_checkpoint_path_alone(tmp_path, capsys):
    config_path = write_toml(vector_config(tmp_path, "train.epochs=1"), tmp_path / "tiny.toml")
    assert main(["fit", "--config", str(config_path)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["checkpoint"].endswith("last.pt")
    # Without --config the checkpoint's own config is used, with overrides on top.
    assert main(["fit", "--resume", printed["checkpoint"], "--set", "train.epochs=2"]) == 0
    assert load_checkpoint(printed["checkpoint"]).epoch == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit"], "fit needs --config FILE"),
        (["fit", "--config", "nowhere.toml"], "config file 'nowhere.toml' does not exist"),
        (["fit", "--config", "{config}", "--set", "optim.lr=fast"], "expected float for optim.lr, got 'fast'"),
        (["fit", "--config", "{config}", "--set", "optim.momentum=0.9"], "unknown key 'optim.momentum'"),
        pytest.param(
            ["fit", "--config", "{config}", "--device", "cuda"],
            "no CUDA device is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a CUDA device"),
            id="cuda-without-a-device",
        ),
        (["fit", "--config", "{config}", "--resume"], "nothing to resume: checkpoint"),
        (
            ["fit", "--config", "{config}", "--set", 'data.name="array"', "--set", "data.path=/no/such.npy"],
            "data path '/no/such.npy' does not exist",
        ),
        (["evaluate", "--checkpoint", "missing.pt"], "checkpoint 'missing.pt' does not exist"),
        (["sample", "--checkpoint", "missing.pt", "--out", "x.png"], "checkpoint 'missing.pt' does not exist"),
        (["export", "--checkpoint", "missing.pt", "--out", "store/x"], "checkpoint 'missing.pt' does not exist"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    config_path = write_toml(vector_config(tmp_path), tmp_path / "tiny.toml")
    argv = [a.replace("{config}", str(config_path)) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
