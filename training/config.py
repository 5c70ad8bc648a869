"""Training configuration: frozen dataclasses filled from a TOML file and ``key=value`` overrides.

A configuration has four sections (``data``, ``model``, ``optim``, ``train``) and three top-level keys
(``name``, ``seed``, ``out_dir``). Every value is type-checked and range-checked when loaded, so a typo or an
impossible value fails before any data is read, with a message naming the key::

    cfg = load_config("training/configs/mnist.toml", ["optim.lr=3e-4", "train.epochs=2"])
    cfg.optim.lr  # 0.0003

The resolved configuration is stored in every checkpoint as a plain dict (``config_to_dict``) and rebuilt with
``config_from_dict``, which applies the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from models.registry import FLOWS

GENERATED_DATASETS = ("moons", "circles", "checkerboard", "rings", "bimodal")
BUNDLED_DATASETS = ("mnist5k", "digits")
FILE_DATASETS = ("image_folder", "array", "cifar10", "mnist_idx")
DATASETS = GENERATED_DATASETS + BUNDLED_DATASETS + FILE_DATASETS
LR_SCALINGS = ("none", "linear", "sqrt")


class ConfigError(ValueError):
    """A configuration file or override is malformed: unknown key, wrong type or impossible value."""


@dataclass(frozen=True)
class DataConfig:
    """Which data set to load and how to split it.

    Attributes:
        name: one of ``DATASETS``.
        path: file or folder for user data (``image_folder``, ``array``, ``cifar10``, ``mnist_idx``).
        key: array name inside an ``.npz`` file ("" = the only array, or ``x``).
        kind: "auto", "image" or "vector" (how to read an ``.npy``/``.npz`` array).
        num_samples: number of points drawn for generated data sets.
        noise: noise level of generated data sets.
        generate_seed: seed of the generator of synthetic data.
        split_seed: seed of the permutation that splits data into train/val/test.
        val_size: validation items: a count (>= 1) or a fraction (< 1) of the items before splitting.
        test_size: test items, as ``val_size``; ignored when the data has an official test split.
        image_size: resize images of a folder to this square size (0 = keep the size as is).
        crop: "center" (crop to a square before resizing) or "none" (squash).
        channels: image channels of a folder: 0 = infer (1 if every image is grayscale, else 3), 1 or 3.
    """

    name: str = "moons"
    path: str = ""
    key: str = ""
    kind: str = "auto"
    num_samples: int = 20000
    noise: float = 0.05
    generate_seed: int = 0
    split_seed: int = 0
    val_size: int | float = 0.1
    test_size: int | float = 0.1
    image_size: int = 0
    crop: str = "center"
    channels: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Which flow to build; each flow type reads only its own keys.

    Attributes:
        type: "RealNVP" (images), "NVPNet" (vectors) or "PiecewiseLinearFlow" (1-D vectors).
        num_scales: RealNVP scales.
        mid_channels: RealNVP feature maps of the coupling ResNets.
        num_blocks: RealNVP residual blocks per coupling network.
        hidden_dim: NVPNet hidden units.
        depth: NVPNet coupling layers.
        num_bins: PiecewiseLinearFlow bins.
        xmin: PiecewiseLinearFlow lower edge of the support.
        xmax: PiecewiseLinearFlow upper edge of the support.
    """

    type: str = "NVPNet"
    num_scales: int = 2
    mid_channels: int = 64
    num_blocks: int = 8
    hidden_dim: int = 64
    depth: int = 6
    num_bins: int = 32
    xmin: float = -4.0
    xmax: float = 4.0


@dataclass(frozen=True)
class OptimConfig:
    """Adam with warm-up, clipping, the weight-norm L2 penalty and an optional EMA of the weights.

    Attributes:
        lr: peak learning rate.
        betas: Adam betas.
        weight_norm_l2: coefficient of the L2 penalty on the weight-norm scales (5e-5 in the paper).
        grad_clip: max global gradient norm (0 = no clipping).
        warmup_steps: linear warm-up from 0 to ``lr`` over this many optimizer steps.
        schedule: "constant" or "cosine" (decay to ``min_lr`` at the last step).
        min_lr: final learning rate of the cosine schedule.
        ema_decay: decay of the exponential moving average of the weights (0 = off); the EMA weights are then
            the ones evaluated, sampled and exported.
        lr_scaling: how the schedule follows the global batch under ``torchrun``: "none" (``lr`` as written),
            "linear" (× N processes) or "sqrt" (× √N); ``lr`` and ``min_lr`` are those of one process.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_norm_l2: float = 5e-5
    grad_clip: float = 100.0
    warmup_steps: int = 200
    schedule: str = "constant"
    min_lr: float = 0.0
    ema_decay: float = 0.0
    lr_scaling: str = "none"


@dataclass(frozen=True)
class RunConfig:
    """How long and where to train.

    Attributes:
        epochs: number of passes over the training split.
        batch_size: batch size of each process (per device); under ``torchrun`` with N processes one optimizer
            step sees N × ``batch_size`` items (checkpoints of older, global-batch runs are converted on load).
        eval_batch_size: batch size of validation/test evaluation.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        amp: "auto" (bf16 autocast on CUDA), "bf16" or "none".
        num_threads: torch CPU threads (0 = torch's default).
        log_every: write a training metrics line every this many steps.
        sample_every: write a sample grid every this many epochs (0 = never).
        sample_count: number of samples in the grid.
        sample_temperature: temperature of the samples in the grid.
        max_bad_steps: abort after this many consecutive steps with a NaN/Inf loss or gradient.
        progress: show a tqdm progress bar.
    """

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 500
    device: str = "auto"
    amp: str = "auto"
    num_threads: int = 0
    log_every: int = 10
    sample_every: int = 1
    sample_count: int = 64
    sample_temperature: float = 0.7
    max_bad_steps: int = 10
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The whole resolved configuration of a run (saved with every checkpoint).

    Attributes:
        name: run name (also the default artifact name).
        seed: seed of initialization, data order and dequantization noise.
        out_dir: folder of checkpoints, metrics and sample grids.
        data: data section.
        model: model section.
        optim: optimizer section.
        train: run section.
    """

    name: str = "run"
    seed: int = 0
    out_dir: str = "runs/run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a TOML configuration file and apply ``section.key=value`` overrides.

    Args:
        path: TOML file, or None to start from the defaults.
        overrides: strings such as ``"optim.lr=3e-4"``; the value is parsed as a TOML value, and taken as a
            plain string when it is not one (so ``data.path=/tmp/x`` works without quotes).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or impossible value.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file '{path}' does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file '{path}' is not valid TOML: {err}") from None
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build and validate a configuration from nested plain dicts (missing keys take defaults).

    Raises:
        ConfigError: unknown key, wrong type or impossible value.
    """
    config = _build(TrainConfig, raw, prefix="")
    _validate(config)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dicts (tuples as lists) of a configuration, for checkpoints and model cards."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def apply_overrides(config: TrainConfig, overrides: typing.Sequence[str]) -> TrainConfig:
    """A copy of ``config`` with ``section.key=value`` overrides applied (same syntax as :func:`load_config`)."""
    raw = config_to_dict(config)
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return config_from_dict(raw)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"expected an override of the form section.key=value, got '{item}'")
    key, text = item.split("=", 1)
    key, text = key.strip(), text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare string such as a path
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{part}' is a value, not a section, in override '{key}'")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a table for {where}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}{key}' (expected one of {', '.join(prefix + n for n in names)})")
    values = {}
    for name in names:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], prefix=f"{prefix}{name}.")
        else:
            values[name] = _coerce(raw[name], hint, f"{prefix}{name}")
    return cls(**values)


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"list of {len(typing.get_args(hint))} {_type_name(typing.get_args(hint)[0])}s"
    return hint.__name__


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted where floats are expected."""
    error = ConfigError(f"expected {_type_name(hint)} for {key}, got {value!r}")
    if isinstance(hint, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise error
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise error
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise error
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise error
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"expected a finite float for {key}, got {value!r}")
            return float(value)
        raise error
    if hint is str:
        if isinstance(value, str):
            return value
        raise error
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # internal: a new field type


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(key: str, value: str, choices: typing.Sequence[str]) -> None:
    _check(value in choices, f"expected one of {', '.join(choices)} for {key}, got '{value}'")


def _check_size(key: str, value: int | float) -> None:
    if isinstance(value, int):
        _check(value >= 0, f"expected a count >= 0 or a fraction in [0, 1) for {key}, got {value}")
    else:
        _check(0.0 <= value < 1.0, f"expected a count >= 0 or a fraction in [0, 1) for {key}, got {value}")


def _validate(config: TrainConfig) -> None:
    """Range checks that types alone cannot express."""
    data, model, optim, run = config.data, config.model, config.optim, config.train
    _check(bool(config.name.strip()), "expected a non-empty name")
    _check(bool(config.out_dir.strip()), "expected a non-empty out_dir")
    _check_choice("data.name", data.name, DATASETS)
    _check_choice("data.kind", data.kind, ("auto", "image", "vector"))
    _check_choice("data.crop", data.crop, ("center", "none"))
    _check(data.channels in (0, 1, 3), f"expected 0, 1 or 3 for data.channels, got {data.channels}")
    _check(data.image_size >= 0, f"expected data.image_size >= 0, got {data.image_size}")
    _check(data.num_samples > 0, f"expected data.num_samples > 0, got {data.num_samples}")
    _check(data.noise >= 0, f"expected data.noise >= 0, got {data.noise}")
    _check_size("data.val_size", data.val_size)
    _check_size("data.test_size", data.test_size)
    if data.name in FILE_DATASETS:
        _check(bool(data.path), f"data.name = '{data.name}' needs data.path (a file or folder)")
    _check_choice("model.type", model.type, tuple(FLOWS))
    for key in ("num_scales", "mid_channels", "num_blocks", "hidden_dim", "depth"):
        _check(getattr(model, key) >= 1, f"expected model.{key} >= 1, got {getattr(model, key)}")
    _check(model.num_bins >= 2, f"expected model.num_bins >= 2, got {model.num_bins}")
    _check(model.xmin < model.xmax, f"expected model.xmin < model.xmax, got {model.xmin} >= {model.xmax}")
    _check(optim.lr > 0, f"expected optim.lr > 0, got {optim.lr}")
    _check(all(0 <= b < 1 for b in optim.betas), f"expected optim.betas in [0, 1), got {list(optim.betas)}")
    _check(optim.weight_norm_l2 >= 0, f"expected optim.weight_norm_l2 >= 0, got {optim.weight_norm_l2}")
    _check(optim.grad_clip >= 0, f"expected optim.grad_clip >= 0, got {optim.grad_clip}")
    _check(optim.warmup_steps >= 0, f"expected optim.warmup_steps >= 0, got {optim.warmup_steps}")
    _check_choice("optim.schedule", optim.schedule, ("constant", "cosine"))
    _check(0 <= optim.min_lr <= optim.lr, f"expected 0 <= optim.min_lr <= optim.lr, got {optim.min_lr}")
    _check(0 <= optim.ema_decay < 1, f"expected optim.ema_decay in [0, 1), got {optim.ema_decay}")
    _check_choice("optim.lr_scaling", optim.lr_scaling, LR_SCALINGS)
    _check(run.epochs >= 1, f"expected train.epochs >= 1, got {run.epochs}")
    _check(run.batch_size >= 1, f"expected train.batch_size >= 1, got {run.batch_size}")
    _check(run.eval_batch_size >= 1, f"expected train.eval_batch_size >= 1, got {run.eval_batch_size}")
    _check(
        run.device in ("auto", "cpu", "cuda") or run.device.startswith("cuda:"),
        f"expected auto, cpu, cuda or cuda:N for train.device, got '{run.device}'",
    )
    _check_choice("train.amp", run.amp, ("auto", "bf16", "none"))
    _check(run.num_threads >= 0, f"expected train.num_threads >= 0, got {run.num_threads}")
    _check(run.log_every >= 1, f"expected train.log_every >= 1, got {run.log_every}")
    _check(run.sample_every >= 0, f"expected train.sample_every >= 0, got {run.sample_every}")
    _check(run.sample_count >= 1, f"expected train.sample_count >= 1, got {run.sample_count}")
    _check(run.sample_temperature > 0, f"expected train.sample_temperature > 0, got {run.sample_temperature}")
    _check(run.max_bad_steps >= 1, f"expected train.max_bad_steps >= 1, got {run.max_bad_steps}")
