"""Configuration: TOML + overrides into frozen dataclasses, with errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.checkpoint import build_flow
from training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def test_defaults_and_overrides_are_typed():
    config = load_config(
        None,
        [
            "optim.lr=3e-4",
            "train.epochs=3",
            "data.path=/tmp/some dir/x.npz",
            "optim.betas=[0.8, 0.9]",
            "train.progress=false",
            'name="abc"',
        ],
    )
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.train.epochs == 3
    assert config.data.path == "/tmp/some dir/x.npz"  # bare strings need no quotes
    assert config.optim.betas == (0.8, 0.9)
    assert config.train.progress is False
    assert config.name == "abc"
    assert isinstance(config.optim.warmup_steps, int)
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0  # an int where a float is expected is fine


def test_config_is_frozen_and_round_trips_through_plain_dicts():
    config = load_config(CONFIGS / "mnist.toml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]
    raw = config_to_dict(config)
    assert raw["optim"]["betas"] == [0.9, 0.999]
    assert config_from_dict(raw) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-3", "unknown key 'optim.lrr' (expected one of optim.lr, optim.betas"),
        ("colour=1", "unknown key 'colour' (expected one of name, seed, out_dir, data, model, optim, train)"),
        ("optim.lr=abc", "expected float for optim.lr, got 'abc'"),
        ("train.epochs=1.5", "expected int for train.epochs, got 1.5"),
        ("train.epochs=true", "expected int for train.epochs, got True"),
        ("train.progress=1", "expected bool for train.progress, got 1"),
        ("optim.betas=[0.9]", "expected list of 2 floats for optim.betas, got [0.9]"),
        ("optim.lr=-1", "expected optim.lr > 0, got -1.0"),
        ("optim.lr=inf", "expected a finite float for optim.lr, got inf"),
        ("train.epochs=0", "expected train.epochs >= 1, got 0"),
        ("data.val_size=1.5", "expected a count >= 0 or a fraction in [0, 1) for data.val_size, got 1.5"),
        ('data.name="imagenet"', "expected one of moons, circles, checkerboard, rings, bimodal, mnist5k"),
        ('model.type="Glow"', "expected one of RealNVP, NVPNet, PiecewiseLinearFlow for model.type, got 'Glow'"),
        ("model.xmin=5", "expected model.xmin < model.xmax, got 5.0 >= 4.0"),
        ('train.device="tpu"', "expected auto, cpu, cuda or cuda:N for train.device, got 'tpu'"),
        ('optim.lr_scaling="cubic"', "expected one of none, linear, sqrt for optim.lr_scaling, got 'cubic'"),
        ('data.name="array"', "data.name = 'array' needs data.path"),
        ("data=3", "expected a table for data, got 3"),
        ("epochs", "expected an override of the form section.key=value, got 'epochs'"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*missing.toml' does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.learning_rate'"):
        load_config(unknown)


@pytest.mark.parametrize("name", ["mnist", "moons", "bimodal", "cifar10"])
def test_shipped_configs_load_and_build_their_flow(name):
    config = load_config(CONFIGS / f"{name}.toml")
    assert config.name == name
    shapes = {
        "mnist": ("image", (1, 28, 28)),
        "moons": ("vector", (2,)),
        "bimodal": ("vector", (1,)),
        "cifar10": ("image", (3, 32, 32)),
    }
    kind, shape = shapes[name]
    flow = build_flow(config.model, kind, shape)
    assert tuple(flow.event_shape) == shape


def test_cifar10_config_has_the_papers_settings():
    config = load_config(CONFIGS / "cifar10.toml")
    assert (config.model.type, config.model.num_blocks, config.model.mid_channels) == ("RealNVP", 8, 64)
    assert config.optim.weight_norm_l2 == pytest.approx(5e-5)
    assert config.data.name == "cifar10"


def test_flow_must_fit_the_data():
    config = TrainConfig()
    with pytest.raises(ConfigError, match=r"needs vector data"):
        build_flow(config.model, "image", (1, 8, 8))
    realnvp = apply_overrides(config, ['model.type="RealNVP"']).model
    with pytest.raises(ConfigError, match=r"needs square images"):
        build_flow(realnvp, "image", (1, 8, 6))
    piecewise = apply_overrides(config, ['model.type="PiecewiseLinearFlow"']).model
    with pytest.raises(ConfigError, match=r"needs 1-D data, got dimension 2"):
        build_flow(piecewise, "vector", (2,))
