"""Fixtures: a store of tiny artifacts, and in-process apps (httpx.ASGITransport + LifespanManager)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.config import Settings
from service.main import create_app
from tests.service.artifacts import build_store

OpenClient = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits`` (RealNVP, 1x8x8 images) and ``moons`` (NVPNet, D=2), untrained and exported."""
    return build_store(tmp_path_factory.mktemp("store"))


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 60.0) -> httpx.Response:
    """Poll ``/readyz`` until loading has finished (ready or failed); return the last answer."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while True:
        response = await client.get("/readyz")
        if response.json()["status"] != "loading" or loop.time() > give_up:
            return response
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serve_in_process(
    model_dir: Path, *, wait: bool = True, headers: dict[str, str] | None = None, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An app for ``Settings(model_dir=model_dir, **settings)`` and a client talking to it in-process."""
    app = create_app(Settings(model_dir=model_dir, **settings))
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service", headers=headers) as client:
            client.app = app  # type: ignore[attr-defined]  (tests reach app.state through it)
            if wait:
                await wait_ready(client)
            yield client


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
