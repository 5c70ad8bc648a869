"""Bodies of the Open Inference Protocol (KServe V2) routes, with its datatypes and this service's tensors.

The protocol's HTTP/REST section defines the JSON objects; the names below follow it (``$inference_request``,
``$request_input``, ``$request_output``, ``$inference_response``, ``$response_output``, ``$metadata_model_response``,
``$metadata_server_response``, ``$metadata_tensor``). Tensors travel as ``data`` (row-major, flat or nested) or,
with Triton's binary tensor data extension, as raw little-endian bytes after the JSON header.

References:
    KServe, "Open Inference Protocol (V2 Inference Protocol)", HTTP/REST API; NVIDIA Triton Inference Server,
    "Binary Tensor Data Extension".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Numeric datatypes an input may use, with their little-endian numpy layout (for the binary extension).
INPUT_DATATYPES: dict[str, np.dtype] = {
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
OUTPUT_DATATYPES: dict[str, np.dtype] = {"FP64": np.dtype("<f8"), "BOOL": np.dtype("?")}
INPUT_NAME = "input"
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension's header: bytes of JSON before the data
EXTENSIONS = ("binary_tensor_data",)


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor this service can give per item.

    Attributes:
        datatype: its protocol datatype.
        description: what it holds.
        needs_references: whether it needs the card's reference scores (the default anomaly score).
    """

    datatype: str
    description: str
    needs_references: bool = False


OUTPUTS: dict[str, OutputSpec] = {
    "log_likelihood": OutputSpec("FP64", "log-likelihood per item, nats (images at the bin centre x + 0.5)"),
    "bits_per_dim": OutputSpec("FP64", "negative log-likelihood per item, bits per dimension"),
    "anomaly_score": OutputSpec("FP64", "the model's default anomaly score (higher = more anomalous)", True),
    "anomaly_p_value": OutputSpec("FP64", "its conformal p-value against the card's reference scores", True),
    "is_anomaly": OutputSpec("BOOL", "anomaly_p_value <= fpr (request parameter `fpr`, else ANOMALY_FPR)", True),
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


class RequestInput(_Body):
    """``$request_input``: one input tensor."""

    name: str = Field(description=f"`{INPUT_NAME}`, the one input of every model here.")
    shape: list[Annotated[int, Field(ge=0)]] = Field(description="`[N, *item shape]` (the card's shape).")
    datatype: str = Field(description=f"One of {', '.join(INPUT_DATATYPES)}.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size`: bytes of this tensor after the JSON header (binary extension)."
    )
    data: list[Any] | None = Field(default=None, description="The values, row-major, flat or nested.")


class RequestOutput(_Body):
    """``$request_output``: an output the client wants."""

    name: str = Field(description=f"One of {', '.join(OUTPUTS)}.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data`: true to get it as raw bytes after the JSON header."
    )


class InferenceRequest(_Body):
    """``$inference_request``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [{"name": INPUT_NAME, "shape": [2, 2], "datatype": "FP32", "data": [0.5, -0.2, 1, 0]}],
                    "outputs": [{"name": "log_likelihood"}, {"name": "bits_per_dim"}],
                }
            ]
        }
    )

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="`fpr` in (0, 1): false-positive rate of `is_anomaly`; `binary_data_output`: every output as "
        "raw bytes. Others (Triton's `priority`, `timeout`, ...) are ignored.",
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(default=None, description="Default: every output the model has.")


class ResponseOutput(BaseModel):
    """``$response_output``: one output tensor."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """``$inference_response``."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    """``$metadata_tensor``: ``-1`` stands for the batch dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``$metadata_model_response``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "mnist",
                    "versions": ["1.0.0"],
                    "platform": "pytorch_torchscript",
                    "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, 1, 28, 28]}],
                    "outputs": [{"name": "log_likelihood", "datatype": "FP64", "shape": [-1]}],
                }
            ]
        }
    )

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(BaseModel):
    """``$metadata_server_response``."""

    name: str
    version: str
    extensions: list[str]


class ReadyResponse(BaseModel):
    """Readiness as a body (the protocol's answer is the status code: 200 ready, 4xx not)."""

    ready: bool


class LiveResponse(BaseModel):
    """Liveness as a body (the status code is the answer)."""

    live: bool


class V2Error(BaseModel):
    """``$inference_error_response`` (every error of a ``/v2`` route): what was expected and what came."""

    error: str


def v2_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries of the ``/v2`` routes, with an example, for the given error codes."""
    examples = {
        400: "inputs.0.shape: expected [N, 1, 28, 28] for model 'mnist', got [1, 784]",
        401: "expected header 'Authorization: Bearer <API_KEY>', got no bearer token",
        404: "model: expected one of ['mnist', 'moons'], got 'cifar'",
        413: "inputs.0.shape.0: expected at most MAX_SAMPLES = 256 items, got 1000",
        503: "queue of model 'mnist' is full: expected at most 1024 queued samples, got 1020 queued + 8 requested",
        504: "request to model 'mnist' expected to finish within the request timeout, got no result after 30.000 s",
    }
    return {
        code: {"model": V2Error, "content": {"application/json": {"example": {"error": examples[code]}}}}
        for code in codes
    }
