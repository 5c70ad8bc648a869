"""The body of ``POST /admin/reload``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReloadResponse(BaseModel):
    """What one look at ``MODEL_DIR`` changed (``NAME@VERSION`` for versions that began to serve)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "added": ["moons@1.0.0"],
                    "replaced": ["mnist@1.1.0"],
                    "removed": ["bimodal"],
                    "unchanged": [],
                    "failed": {"digits": "refused new contents, still serving version '1.0.0': checksum mismatch"},
                }
            ]
        }
    )

    added: list[str] = Field(description="Models that began to serve.")
    replaced: list[str] = Field(description="New versions that took over; the old ones drain, then are dropped.")
    removed: list[str] = Field(description="Folders gone; their versions drain, then are dropped.")
    unchanged: list[str] = Field(description="Folders touched or rewritten with the artifact already served.")
    failed: dict[str, str] = Field(description="Refused new contents, and why; an older version keeps serving.")
