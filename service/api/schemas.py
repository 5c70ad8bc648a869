"""Request and response bodies, with the limits that do not depend on settings and with examples.

Limits that depend on settings (``MAX_SAMPLES``) are checked by the service and answered with 413.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A 28x28 8-bit grayscale PNG (an "X"), valid input for the bundled mnist model.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAANklEQVR42mNgGGHgP1YmhtB/PHr/4zH5Px57/+NxFaocEyne+Y/Xq"
    "//xBsN/vEH0n9TgG94AAOZVFe0TyyB0AAAAAElFTkSuQmCC"
)
MAX_SEED = 2**63 - 1

OutputFormat = Literal["array", "png"]
# The engine's precisions (service.engine.precision), spelled out here so the schemas stay free of torch.
Precision = Literal["fp32", "bf16"]
DECODE_ROUTES = "/sample, /sample.png, /decode and /interpolate"
PRECISION_DESCRIPTION = (
    "`fp32` (default): exact float32. `bf16`: the decode runs under bfloat16 autocast (convolutions and matrix "
    "products in bfloat16, the rest mostly float32), meant for GPUs and CPUs with native bfloat16; pixels off by "
    "~0.3 on average but by tens at worst (docs/service.md#precision). Offered where ALLOW_BF16 allows (by "
    "default only on devices with native bfloat16; elsewhere 422). Never batched with fp32 requests."
)


def _model_field() -> Any:
    return Field(
        default=None,
        description="Model to use; may be omitted when one model is served or DEFAULT_MODEL is set.",
        examples=["mnist"],
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


class SampleRequest(_Request):
    """Draw ``n`` samples ``decode(temperature * randn(n, D))``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "mnist", "n": 4, "temperature": 0.8, "seed": 7, "format": "array"}]}
    )

    model: str | None = _model_field()
    n: int = Field(default=1, ge=1, description="Number of samples, at most MAX_SAMPLES (413 beyond).")
    temperature: float = Field(default=1.0, gt=0, le=2, allow_inf_nan=False, description="Latent scale T.")
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Same seed, same samples, whatever else the server does."
    )
    format: OutputFormat = Field(default="array", description="`array` (numbers) or `png` (image models).")
    precision: Precision = Field(default="fp32", description=PRECISION_DESCRIPTION)


class InputsRequest(_Request):
    """Data items as numbers (``inputs``) or as base64 PNG/JPEG images (``images``), exactly one of the two."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "mnist", "images": [EXAMPLE_PNG]},
                {"model": "moons", "inputs": [[0.5, -0.25], [1.0, 0.1]]},
            ]
        }
    )

    model: str | None = _model_field()
    inputs: list[Any] | None = Field(
        default=None,
        min_length=1,
        description="`[N, *shape]` numbers: 8-bit integer pixels 0..255 for image models, floats for vectors.",
    )
    images: list[str] | None = Field(
        default=None, min_length=1, description="Base64 PNG/JPEG images of the card's size and mode."
    )
    # Precisions this request may ask for. Scores and latents are exact float32 only: bfloat16 would move a
    # log-likelihood by whole nats, beyond what the card's reference scores and p-values allow.
    offered_precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    precision: Literal["fp32"] = Field(
        default="fp32", description=f"Always `fp32`: scores and latents are exact (`bf16` is for {DECODE_ROUTES})."
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_is_offered(cls, value: object) -> object:
        if value in ("fp32", "bf16") and value not in cls.offered_precisions:
            raise ValueError(
                f"expected 'fp32' (scores and latents are computed in exact float32 only; 'bf16' is "
                f"offered by {DECODE_ROUTES}), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> InputsRequest:
        given = [name for name in ("inputs", "images") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of 'inputs' or 'images', got {given or 'neither'}")
        return self


class DecodeRequest(_Request):
    """Decode latents ``z`` to data."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "moons", "latents": [[0.0, 0.0], [1.0, -1.0]], "format": "array"}]}
    )

    model: str | None = _model_field()
    latents: list[list[float]] = Field(min_length=1, description="`[N, D]` latent vectors.")
    format: OutputFormat = "array"
    precision: Precision = Field(default="fp32", description=PRECISION_DESCRIPTION)


class InterpolateRequest(InputsRequest):
    """Encode 2 (``linear``/``slerp``) or 4 (``manifold``) items and decode a path or grid between them."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "mnist",
                    "images": [EXAMPLE_PNG, EXAMPLE_PNG],
                    "steps": 8,
                    "method": "slerp",
                    "format": "png",
                },
                {"model": "moons", "inputs": [[0, 0], [1, 1], [1, 0], [0, 1]], "steps": 4, "method": "manifold"},
            ]
        }
    )

    steps: int = Field(default=8, ge=2, le=64, description="Frames on the path (per side for `manifold`).")
    method: Literal["linear", "slerp", "manifold"] = Field(
        default="linear",
        description="`linear`/`slerp` between 2 items; `manifold`: the steps x steps grid of Dinh et al. eq. 19 "
        "over 4 items.",
    )
    format: OutputFormat = "array"
    offered_precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16")
    precision: Precision = Field(  # type: ignore[assignment]
        default="fp32",
        description="Precision of the decode; the items are always encoded in exact fp32. " + PRECISION_DESCRIPTION,
    )


class SamplesResponse(BaseModel):
    """Decoded data as numbers: images as integers 0..255 ``[n, C, H, W]``, vectors as floats ``[n, D]``."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{"model": "moons", "shape": [2, 2], "samples": [[0.1, 0.9], [-0.7, 0.3]]}]},
    )

    model: str
    shape: list[int]
    samples: list[Any]


class ImagesResponse(BaseModel):
    """Decoded images as base64 PNGs (row-major for an interpolation grid)."""

    model_config = ConfigDict(
        protected_namespaces=(), json_schema_extra={"examples": [{"model": "mnist", "images": [EXAMPLE_PNG]}]}
    )

    model: str
    images: list[str]


Dequantization = Literal["bin_centre", "uniform"]
MAX_DEQUANTIZATION_SAMPLES = 64


class DequantizationInfo(BaseModel):
    """What ``log_likelihood`` and ``bits_per_dim`` of an image model measure (docs/artifact.md)."""

    method: Dequantization = Field(
        description="`bin_centre`: the density at x + 0.5, deterministic (what the anomaly scores use); "
        "`uniform`: log P(x) of the 8-bit image estimated with `samples` seeded uniform draws, the standard "
        "measure of the card's `test_bits_per_dim` (k = 1) and `test_iw_bits_per_dim` (k > 1)."
    )
    samples: int = Field(description="k, the dequantization draws per item (1 for `bin_centre`).")
    seed: int | None = Field(description="Seed of the draws (`uniform`): same seed and items, same answer.")


class LogLikelihoodResponse(BaseModel):
    """Exact log-likelihood per item, in nats and in bits per dimension."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{"model": "mnist", "log_likelihood": [-712.4], "bits_per_dim": [1.311]}]},
    )

    model: str
    log_likelihood: list[float]
    bits_per_dim: list[float]
    dequantization: DequantizationInfo | None = Field(
        default=None, description="Image models: how the 8-bit items were dequantized (absent for vectors)."
    )


class EncodeResponse(BaseModel):
    """Latents ``z`` and ``log |det dz/dx|`` per item."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={"examples": [{"model": "moons", "latents": [[0.3, -1.2]], "log_det": [0.42]}]},
    )

    model: str
    latents: list[list[float]]
    log_det: list[float]


class ModelsResponse(BaseModel):
    """The cards of the ready models, and what is wrong with the others."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "default_model": "mnist",
                    "models": [{"name": "mnist", "flow_type": "RealNVP", "data_kind": "image", "shape": [1, 28, 28]}],
                    "unavailable": {"broken": "failed: checksum mismatch"},
                }
            ]
        }
    )

    default_model: str | None
    models: list[dict[str, Any]]
    unavailable: dict[str, str]


class HealthResponse(BaseModel):
    """Liveness."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class ReadinessResponse(BaseModel):
    """Readiness: every model loaded, checksum-verified and warmed up."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "failed", "models": {"mnist": "ready", "broken": "failed"}, "failed": {"broken": "..."}}
            ]
        }
    )

    status: Literal["ready", "loading", "failed"]
    models: dict[str, str]
    failed: dict[str, str]


class ErrorBody(BaseModel):
    """Every error: what was expected and what was received."""

    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries, with an example, for the given error codes."""
    examples = {
        401: "expected header 'Authorization: Bearer <API_KEY>', got no Authorization header",
        404: "model: expected one of ['mnist', 'moons'], got 'cifar'",
        413: "n: expected at most MAX_SAMPLES = 256 items, got 1000",
        422: "temperature: expected less than or equal to 2, got 3.5",
        503: "queue of model 'mnist' is full: expected at most 1024 queued samples, got 1020 queued + 8 requested",
        504: "request to model 'mnist' expected to finish within the request timeout, got no result after 30.000 s",
    }
    return {
        code: {"model": ErrorBody, "content": {"application/json": {"example": {"detail": examples[code]}}}}
        for code in codes
    }
