"""An app served in-process (httpx.ASGITransport + LifespanManager), for tests that need no real socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from service.core.config import Settings
from service.main import create_app


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
