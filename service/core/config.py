"""Service settings, read from environment variables (no prefix: ``MODEL_DIR``, ``MAX_BATCH_SIZE``, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[2] / "model_store"
# MAX_BATCH_SIZE when unset: a GPU is still far from saturated at 64 rows of these flows (and its batches cost
# little host time each), a CPU is not (docs/benchmarks.md: batch 256 runs slower per sample than 64 on CPU).
CPU_MAX_BATCH_SIZE = 64
CUDA_MAX_BATCH_SIZE = 256
# MAX_BATCHES_IN_FLIGHT when unset: on CUDA a batch takes about as long as the event loop's turn-around between
# two batches, so the next one is queued on the device thread while the last runs; on CPU batches are long next
# to that turn-around and a second batch formed early would only be smaller.
CPU_BATCHES_IN_FLIGHT = 1
CUDA_BATCHES_IN_FLIGHT = 2


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
    max_batch_size: int = Field(
        default=CPU_MAX_BATCH_SIZE,
        ge=1,
        description=f"Most samples merged into one forward pass. Unset: {CPU_MAX_BATCH_SIZE} on CPU, "
        f"{CUDA_MAX_BATCH_SIZE} when DEVICE is CUDA (`cuda`, `cuda:N`, or `auto` with CUDA present).",
    )
    max_batches_in_flight: int = Field(
        default=CPU_BATCHES_IN_FLIGHT,
        ge=1,
        le=4,
        description=f"Batches per model handed to the device thread and not yet back. Unset: {CPU_BATCHES_IN_FLIGHT} "
        f"on CPU, {CUDA_BATCHES_IN_FLIGHT} on CUDA (the next batch is prepared and queued while one runs).",
    )
    allow_bf16: Literal["auto", "true", "false"] = Field(
        default="auto",
        description="Whether `/sample`, `/sample.png`, `/decode` and `/interpolate` accept `precision: bf16`. "
        "`auto`: where the device computes bfloat16 natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX-BF16); "
        "elsewhere bf16 is emulated and slower than fp32. `true`/`false` force it.",
    )
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
    admin_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key of the admin routes (`POST /admin/reload`); unset turns them off (403). Must differ "
        "from `API_KEY`.",
    )
    reload_interval_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds between two looks at `MODEL_DIR` for model folders added, replaced or removed; 0 "
        "turns polling off (`POST /admin/reload` still works).",
    )
    keep_model_versions: int = Field(
        default=1,
        ge=1,
        description="Versions of a model kept loaded: the folder's current one plus earlier ones, still reachable "
        "as `NAME@VERSION` (1: a replaced version drains and is dropped).",
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

    @model_validator(mode="after")
    def _batching_follows_the_device(self) -> Settings:
        cuda = device_is_cuda(self.device)
        if "max_batch_size" not in self.model_fields_set and cuda:
            self.max_batch_size = CUDA_MAX_BATCH_SIZE
        if "max_batches_in_flight" not in self.model_fields_set and cuda:
            self.max_batches_in_flight = CUDA_BATCHES_IN_FLIGHT
        return self

    @field_validator("log_level", "allow_bf16", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("default_model", "api_key", "admin_api_key", mode="before")
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

    @model_validator(mode="after")
    def _admin_key_is_its_own(self) -> Settings:
        # One shared key would make every API client an administrator.
        admin, api = self.admin_api_key, self.api_key
        if admin is not None and api is not None and admin.get_secret_value() == api.get_secret_value():
            raise ValueError("ADMIN_API_KEY: expected a key different from API_KEY, got the same key")
        return self


def device_is_cuda(device: str) -> bool:
    """Whether the ``DEVICE`` setting means a CUDA device (``auto`` does when CUDA is present)."""
    if device == "auto":
        import torch  # here, not at import time: the settings module stays cheap to import

        return torch.cuda.is_available()
    return device.startswith("cuda")
