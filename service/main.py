"""The FastAPI app: ``create_app(settings)`` and its lifespan (load models in the background, drain on exit)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI

from service.api.deps import ServiceContext, require_admin_key, require_api_key
from service.api.errors import install_error_handlers
from service.api.middleware import BodySizeLimit, RequestMetrics
from service.api.routes import admin, anomaly, drift, health, interpolation, models, playground, sampling, scoring, v2
from service.core.config import Settings
from service.core.metrics import Metrics
from service.engine.registry import ModelRegistry

logger = logging.getLogger("service")

DESCRIPTION = """Sampling, exact log-likelihood, encoding, decoding and interpolation with RealNVP-family flows
exported to `MODEL_DIR`. Requests are batched per model; see `/docs` for every endpoint and example."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (read from the environment when omitted).

    Start-up discovers the model folders at once and loads, verifies and warms them up in the background:
    ``/healthz`` answers immediately and ``/readyz`` turns 200 when every model is ready. Afterwards the
    folders are watched (``RELOAD_INTERVAL_S``) and reloaded on change (``service.engine.registry``).
    """
    settings = settings if settings is not None else Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("service").setLevel(settings.log_level.upper())
        registry = ModelRegistry(settings, metrics, on_retired=context.drift.forget)
        registry.discover()
        context.registry = registry
        # loads every model, then looks at MODEL_DIR every RELOAD_INTERVAL_S (hot reload)
        loading = asyncio.create_task(registry.run(), name="load-and-watch-models")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await registry.close()
            logger.info("service stopped: queues drained")

    app = FastAPI(
        title="RealNVP model service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    context = ServiceContext(settings=settings, metrics=metrics)
    app.state.context = context
    # The key check is a dependency only when a key is set (and then OpenAPI shows the bearer scheme).
    protected = [Depends(require_api_key)] if settings.api_key is not None else []
    for router in (sampling.router, scoring.router, anomaly.router, interpolation.router, models.router):
        app.include_router(router, dependencies=protected)
    app.include_router(health.router)
    app.include_router(playground.router)  # the page at / (public: it holds no secret)
    app.include_router(v2.router, dependencies=protected)  # Open Inference Protocol: metadata, infer
    app.include_router(v2.health_router)  # /v2 and /v2/health/*: open for probes, like /healthz
    app.include_router(drift.router, dependencies=protected)  # GET /models/{name}/drift
    # POST /admin/reload: its own key; without ADMIN_API_KEY every call is refused (403) and the schema hides it
    admin_on = settings.admin_api_key is not None
    app.include_router(admin.router, dependencies=[Depends(require_admin_key)], include_in_schema=admin_on)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
