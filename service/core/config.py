"""Service settings, read from environment variables (no prefix: ``MODEL_DIR``, ``MAX_BATCH_SIZE``, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[2] / "model_store"


class Settings(BaseSettings):
    """Every knob of the service, with its default; each field is read from the variable of the same name.

    Build one per app (``create_app(Settings())``); nothing reads the environment at import time.
    """

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", env_ignore_empty=True)

    model_dir: Path = Field(
        default=BUNDLED_MODEL_DIR,
        description="Folder holding one sub-folder per model (`NAME/model.ts` + `NAME/card.json`).",
    )
    default_model: str | None = Field(
        default=None,
        description="Model used when a request omits `model`; unset means the only model, if exactly one.",
    )
    device: str = Field(default="auto", description="`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.")
    torch_threads: int = Field(
        default=0,
        ge=0,
        description="Intra-op threads of the inference thread; 0 keeps torch's default (one per core). On a small "
        "or shared machine 1 avoids oversubscription.",
    )
    max_batch_size: int = Field(default=64, ge=1, description="Most samples merged into one forward pass.")
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="Longest a batch waits for more work, counted from the arrival of its first request. 0: run "
        "at once with whatever is queued; under load batches still form while the device is busy.",
    )
    max_queue: int = Field(
        default=1024, ge=1, description="Most samples waiting per model; beyond it requests get 503."
    )
    max_samples: int = Field(
        default=256,
        ge=1,
        description="Most items one request may ask for or send (`n`, inputs, latents, interpolation frames).",
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest request body; 413 beyond.")
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline of a request; past it the answer is 504 and its work dropped."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, model endpoints need `Authorization: Bearer <API_KEY>` (health/metrics stay open).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level of the service and of uvicorn."
    )
    host: str = Field(default="127.0.0.1", description="Interface `python -m service` binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `python -m service` listens on.")
    anomaly_fpr: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="False-positive rate at which `/anomaly` and `/log-likelihood` flag items when a request "
        "gives no `fpr` (docs/anomaly.md).",
    )
    drift_window: int = Field(
        default=1000,
        ge=2,
        description="Most recent scored items per model in the drift window (`GET /models/{name}/drift`).",
    )
    drift_horizon_s: float = Field(
        default=3600.0, gt=0, description="Items older than this many seconds leave the drift window."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("default_model", "api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.max_queue < self.max_samples:
            raise ValueError(
                f"MAX_QUEUE must hold the largest request: expected MAX_QUEUE >= MAX_SAMPLES "
                f"({self.max_samples}), got {self.max_queue}"
            )
        return self
