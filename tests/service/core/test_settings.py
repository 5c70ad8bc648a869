"""Settings: defaults, the documented variable names, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.config import BUNDLED_MODEL_DIR, Settings

ENV_NAMES = [
    "MODEL_DIR",
    "DEFAULT_MODEL",
    "DEVICE",
    "MAX_BATCH_SIZE",
    "MAX_WAIT_MS",
    "MAX_QUEUE",
    "MAX_SAMPLES",
    "MAX_BODY_BYTES",
    "REQUEST_TIMEOUT_S",
    "API_KEY",
    "LOG_LEVEL",
    "HOST",
    "PORT",
    "TORCH_THREADS",
]


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_dir == BUNDLED_MODEL_DIR and BUNDLED_MODEL_DIR.name == "model_store"
    assert (settings.default_model, settings.device, settings.api_key) == (None, "auto", None)
    assert (settings.max_batch_size, settings.max_wait_ms, settings.max_queue, settings.max_samples) == (
        64,
        0.0,
        1024,
        256,
    )
    assert (settings.max_body_bytes, settings.request_timeout_s) == (10 * 1024 * 1024, 30.0)
    assert (settings.log_level, settings.host, settings.port, settings.torch_threads) == ("info", "127.0.0.1", 8000, 0)


def test_settings_read_the_documented_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "MODEL_DIR": "/srv/models",
        "DEFAULT_MODEL": "mnist",
        "DEVICE": "cpu",
        "MAX_BATCH_SIZE": "8",
        "MAX_WAIT_MS": "2.5",
        "MAX_QUEUE": "300",
        "MAX_SAMPLES": "300",
        "MAX_BODY_BYTES": "1000",
        "REQUEST_TIMEOUT_S": "1.5",
        "TORCH_THREADS": "1",
        "API_KEY": "abc",
        "LOG_LEVEL": "DEBUG",
        "HOST": "0.0.0.0",
        "PORT": "9000",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.model_dir == Path("/srv/models") and settings.default_model == "mnist"
    assert settings.device == "cpu" and settings.max_batch_size == 8 and settings.max_wait_ms == 2.5
    assert settings.max_queue == 300 and settings.max_samples == 300 and settings.max_body_bytes == 1000
    assert settings.request_timeout_s == 1.5 and settings.api_key is not None
    assert settings.api_key.get_secret_value() == "abc" and "abc" not in repr(settings)
    assert settings.log_level == "debug" and settings.host == "0.0.0.0" and settings.port == 9000
    assert settings.torch_threads == 1


def test_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEY", "MAX_BATCH_SIZE", "DEFAULT_MODEL"):  # empty (as compose passes unset ones) = default
        monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.api_key is None and settings.max_batch_size == 64 and settings.default_model is None
    with pytest.raises(ValidationError, match="MAX_QUEUE >= MAX_SAMPLES"):
        Settings(max_queue=10, max_samples=20)
    with pytest.raises(ValidationError):
        Settings(max_batch_size=0)
    with pytest.raises(ValidationError):
        Settings(log_level="loud")
