"""OpenAPI documents of request bodies that the routes parse themselves (JSON or multipart image files)."""

from __future__ import annotations

from typing import Any

from service.api.schemas import EXAMPLE_PNG, InputsRequest

# OpenAPI of a multipart body of image files (with an optional ``model`` field), shared by every route taking one.
MULTIPART_FILES_DOC: dict[str, Any] = {
    "schema": {
        "type": "object",
        "properties": {
            "model": {"type": "string", "example": "mnist"},
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        },
        "required": ["files"],
    },
    "example": {"model": "mnist", "files": ["digit.png"]},
}


def inputs_body_doc() -> dict[str, Any]:
    """OpenAPI for a body FastAPI does not parse itself: JSON ``InputsRequest`` or multipart files."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": InputsRequest.model_json_schema(),
                    "examples": {
                        "images": {"summary": "base64 PNG", "value": {"model": "mnist", "images": [EXAMPLE_PNG]}},
                        "inputs": {"summary": "vectors", "value": {"model": "moons", "inputs": [[0.5, -0.25]]}},
                    },
                },
                "multipart/form-data": MULTIPART_FILES_DOC,
            },
        }
    }
