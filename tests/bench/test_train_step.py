"""``bench/train_step.py``: its ``--sizes`` override and one timed step of a tiny flow (smoke tests)."""

from __future__ import annotations

import argparse

import pytest

from bench import train_step
from training.config import ConfigError


def test_parse_size_reads_scales_channels_blocks_and_names_what_it_expected() -> None:
    assert train_step.parse_size("3,32,2") == (3, 32, 2)
    for bad in ("3,32", "3,x,2", "3,32,2,1", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected NUM_SCALES,MID_CHANNELS,NUM_BLOCKS.*got"):
            train_step.parse_size(bad)


def test_a_size_replaces_the_configs_model_and_is_reported() -> None:
    run = train_step.train_step_rate("mnist", "cpu", False, batch_size=2, steps=1, warmup=0, size=(1, 4, 1))
    assert (run["num_scales"], run["mid_channels"], run["num_blocks"]) == (1, 4, 1)
    wider = train_step.train_step_rate("mnist", "cpu", False, batch_size=2, steps=1, warmup=0, size=(1, 8, 1))
    assert wider["parameters"] > run["parameters"]  # the override reaches the flow that is timed
    assert run["median_step_s"] > 0 and run["images_per_s"] > 0


def test_the_cpu_step_runs_under_bf16_autocast_when_asked() -> None:
    run = train_step.train_step_rate("mnist", "cpu", True, batch_size=2, steps=1, warmup=0, size=(1, 4, 1))
    assert run["precision"] == "bf16-autocast" and run["device"] == "cpu" and run["median_step_s"] > 0


def test_an_impossible_size_is_refused_by_the_configs_own_checks() -> None:
    with pytest.raises(ConfigError, match="num_scales"):
        train_step.train_step_rate("mnist", "cpu", False, batch_size=2, steps=1, warmup=0, size=(0, 4, 1))
