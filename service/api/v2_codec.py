"""Open Inference Protocol bodies ↔ tensors: the JSON header, Triton's binary extension, inputs and outputs.

Every refusal is an ``InvalidInputError`` naming the field as pydantic names it (``inputs.0.shape``,
``outputs.1.name``), with what was expected and what came; under ``/v2`` the handlers answer it as a 400.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import Response

from artifact import ModelCard
from service.api.inputs import check_count, check_items, non_numbers
from service.api.v2_schemas import (
    HEADER_LENGTH,
    INPUT_DATATYPES,
    INPUT_NAME,
    OUTPUT_DATATYPES,
    OUTPUTS,
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    ResponseOutput,
)
from service.core.errors import InvalidInputError

# Media types an infer body may carry: JSON, the binary extension's octet stream, or none (tritonclient sends none).
BODY_MEDIA_TYPES = ("", "application/json", "application/octet-stream")


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_media_type(content_type: str) -> None:
    """Refuse an infer body labelled as anything but JSON or octets (a form post is not a tensor request).

    Raises:
        InvalidInputError: another ``Content-Type``.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in BODY_MEDIA_TYPES and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise InvalidInputError(
            f"content-type: expected application/json, application/octet-stream or none, got {_shown(content_type)}"
        )


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """``(JSON header, binary tensor data)``: the whole body is JSON unless the binary extension's header is set.

    Raises:
        InvalidInputError: ``Inference-Header-Content-Length`` is not an integer in ``[1, body length]``.
    """
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise InvalidInputError(
            f"{HEADER_LENGTH}: expected an integer between 1 and the body's {len(body)} bytes, "
            f"got {_shown(header_length)}"
        )
    return body[:length], body[length:]


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The request object and the binary data after it.

    Raises:
        ValidationError: the JSON breaks ``$inference_request`` (answered 400 naming the field).
        InvalidInputError: a bad binary header length.
    """
    header, binary = split_body(body, header_length)
    return InferenceRequest.model_validate_json(header), binary


def _json_values(what: str, data: list[Any], datatype: str, count: int) -> np.ndarray:
    """``data`` (flat or nested, row-major) → float64 ``(count,)``, each value representable in ``datatype``."""
    wrong = non_numbers(data)
    if wrong:
        raise InvalidInputError(f"{what}.data: expected numbers of datatype {datatype}, got {_shown(wrong[0], 40)}")
    try:
        values = np.asarray(data, dtype=np.float64).reshape(-1)
    except (ValueError, OverflowError) as exc:
        raise InvalidInputError(
            f"{what}.data: expected a flat or rectangular nested array of numbers, got one that is not ({exc})"
        ) from exc
    if values.size != count:
        raise InvalidInputError(f"{what}.data: expected {count} values for its shape, got {values.size}")
    dtype = INPUT_DATATYPES[datatype]
    finite = np.isfinite(values)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        bad = ~finite | (values != np.floor(values)) | (values < info.min) | (values > info.max)
        expected = f"integers in [{info.min}, {info.max}] ({datatype})"
    else:
        with np.errstate(over="ignore"):  # the overflow is what is being looked for
            bad = finite & ~np.isfinite(values.astype(dtype))  # finite in JSON, overflows the declared type
        expected = f"values representable as {datatype}"
    if bad.any():
        index = int(np.argmax(bad))
        raise InvalidInputError(f"{what}.data: expected {expected}, got {values[index]:g} at flat index {index}")
    return values


def _binary_values(what: str, tensor: RequestInput, binary: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """The tensor's raw bytes at ``offset`` of the binary data → ``(float64 (count,), next offset)``."""
    size = (tensor.parameters or {}).get("binary_data_size")
    dtype = INPUT_DATATYPES[tensor.datatype]
    expected_size = count * dtype.itemsize
    if type(size) is not int or size != expected_size:
        raise InvalidInputError(
            f"{what}.parameters.binary_data_size: expected {expected_size} bytes ({count} {tensor.datatype} values "
            f"of {dtype.itemsize} bytes for shape {tensor.shape}), got {_shown(size)}"
        )
    if offset + size > len(binary):
        raise InvalidInputError(
            f"{what}: expected {size} bytes of binary data after the JSON header, got {len(binary) - offset}"
        )
    values = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).astype(np.float64)
    return values, offset + size


def input_tensor(card: ModelCard, request: InferenceRequest, binary: bytes, limit: int) -> torch.Tensor:
    """The request's one input as validated float32 data items ``(N, *card.shape)``.

    Raises:
        InvalidInputError: not exactly one input named ``input``, an unknown datatype, a shape that is not
            ``[N, *card.shape]``, data missing or of the wrong length or type, binary data that does not add up,
            or items the model cannot take (see ``check_items``).
        PayloadTooLargeError: ``N`` over ``MAX_SAMPLES``.
    """
    names = [tensor.name for tensor in request.inputs]
    if names != [INPUT_NAME]:
        raise InvalidInputError(f"inputs: expected one tensor named {INPUT_NAME!r}, got {_shown(names)}")
    tensor = request.inputs[0]
    what = "inputs.0"
    if tensor.datatype not in INPUT_DATATYPES:
        raise InvalidInputError(
            f"{what}.datatype: expected one of {', '.join(INPUT_DATATYPES)}, got {_shown(tensor.datatype)}"
        )
    expected = [-1, *card.shape]
    if len(tensor.shape) != len(expected) or tensor.shape[1:] != list(card.shape):
        shown = "[N, " + ", ".join(map(str, card.shape)) + "]"
        raise InvalidInputError(f"{what}.shape: expected {shown} for model {card.name!r}, got {tensor.shape}")
    if tensor.shape[0] == 0:
        raise InvalidInputError(f"{what}.shape: expected at least one item, got {tensor.shape}")
    check_count(f"{what}.shape.0", tensor.shape[0], limit)
    count = math.prod(tensor.shape)
    binary_size = (tensor.parameters or {}).get("binary_data_size")
    if tensor.data is not None and binary_size is not None:
        raise InvalidInputError(f"{what}: expected data or parameters.binary_data_size, got both")
    if tensor.data is not None:
        values, consumed = _json_values(what, tensor.data, tensor.datatype, count), 0
    elif binary_size is not None:
        values, consumed = _binary_values(what, tensor, binary, 0, count)
    else:
        raise InvalidInputError(f"{what}.data: expected the tensor's values (or binary_data_size), got none")
    if consumed != len(binary):
        raise InvalidInputError(
            f"body: expected {consumed} bytes of binary tensor data after the JSON header, got {len(binary)}"
        )
    items = torch.from_numpy(values.reshape(tensor.shape))
    return check_items(card, items, f"{what} ({INPUT_NAME!r})")


def request_fpr(request: InferenceRequest, default: float) -> float:
    """``parameters.fpr`` of the request, else ``default``.

    Raises:
        InvalidInputError: ``fpr`` is not a number in ``(0, 1)``.
    """
    fpr = (request.parameters or {}).get("fpr")
    if fpr is None:
        return default
    if type(fpr) not in (int, float) or not 0 < fpr < 1:
        raise InvalidInputError(f"parameters.fpr: expected a number in (0, 1), got {_shown(fpr)}")
    return float(fpr)


@dataclass(frozen=True)
class Wanted:
    """An output to return, and whether as raw bytes."""

    name: str
    binary: bool


def requested_outputs(request: InferenceRequest, available: Sequence[str]) -> list[Wanted]:
    """The outputs to return, in the requested order (default: every available one).

    Raises:
        InvalidInputError: an output the model does not give.
    """
    all_binary = (request.parameters or {}).get("binary_data_output") is True
    if request.outputs is None:
        return [Wanted(name, all_binary) for name in available]
    wanted = []
    for index, output in enumerate(request.outputs):
        if output.name not in available:
            raise InvalidInputError(
                f"outputs.{index}.name: expected one of {list(available)}, got {_shown(output.name)}"
            )
        binary = (output.parameters or {}).get("binary_data", all_binary) is True
        wanted.append(Wanted(output.name, binary))
    return wanted


def infer_response(
    model: str, version: str, request_id: str | None, wanted: list[Wanted], values: dict[str, np.ndarray]
) -> Response:
    """``$inference_response`` as JSON, or as JSON + raw bytes when some output is wanted in binary."""
    outputs: list[ResponseOutput] = []
    chunks: list[bytes] = []
    for output in wanted:
        spec = OUTPUTS[output.name]
        array = values[output.name].astype(OUTPUT_DATATYPES[spec.datatype])
        parameters, data = None, None
        if output.binary:
            chunk = array.tobytes()
            chunks.append(chunk)
            parameters = {"binary_data_size": len(chunk)}
        else:
            data = array.tolist()
        outputs.append(
            ResponseOutput.model_construct(
                name=output.name, shape=[len(array)], datatype=spec.datatype, parameters=parameters, data=data
            )
        )
    body = InferenceResponse.model_construct(
        model_name=model, model_version=version, id=request_id, parameters=None, outputs=outputs
    )
    header = body.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return Response(content=header, media_type="application/json")
    return Response(
        content=b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
