"""Fixtures of the service tests: in-process apps over the shared store of tiny artifacts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.inprocess import serve_in_process

OpenClient = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def open_client(store: Path) -> OpenClient:
    """``async with open_client(MAX_QUEUE=..., ...) as client``: a fresh app with its own settings."""

    def opener(model_dir: Path | None = None, **settings: Any) -> Any:
        lowered = {key.lower(): value for key, value in settings.items()}
        return serve_in_process(model_dir or store, **lowered)

    return opener


@pytest.fixture(scope="module")
async def client(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    """One app with default settings (small batches), shared by the read-mostly tests of a module."""
    async with serve_in_process(store, max_batch_size=8, max_wait_ms=2) as shared:
        yield shared
