"""The models of ``MODEL_DIR``: discovery, background loading, readiness, and lookup by name."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from artifact import ArtifactError, ModelCard
from service.core.config import Settings
from service.core.errors import InvalidInputError, ModelNotFoundError, UnavailableError
from service.core.metrics import Metrics
from service.engine.batcher import Batcher
from service.engine.runner import ModelRunner, resolve_device
from service.scoring.references import References

logger = logging.getLogger(__name__)

ModelStatus = Literal["loading", "ready", "failed"]
ENCODE = "encode"
DECODE = "decode"


@dataclass(eq=False)
class ServedModel:
    """One folder of ``MODEL_DIR`` and what became of it."""

    name: str
    directory: Path
    status: ModelStatus = "loading"
    error: str | None = None
    runner: ModelRunner | None = None
    batcher: Batcher | None = None
    references: References | None = None

    @property
    def card(self) -> ModelCard:
        """The card of a ready model."""
        assert self.runner is not None, "only ready models have a verified card"
        return self.runner.card


class ModelRegistry:
    """Finds, loads and hands out the models; owns one executor thread per device and one batcher per model.

    Args:
        settings: the app's settings.
        metrics: the app's metrics.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.device = resolve_device(settings.device)
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self.models: dict[str, ServedModel] = {}
        self.problems: dict[str, str] = {}
        self.loading_done = False

    def executor_for(self, device: torch.device) -> ThreadPoolExecutor:
        """The single worker thread that runs all torch work of ``device``."""
        key = str(device)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"torch-{key}",
                initializer=_configure_torch_thread,
                initargs=(self._settings.torch_threads,),
            )
        return self._executors[key]

    def discover(self) -> None:
        """List the model folders (every non-hidden sub-folder of ``MODEL_DIR``)."""
        root = self._settings.model_dir
        if not root.is_dir():
            self.problems["MODEL_DIR"] = f"expected a folder of models, got no folder at {root}"
            logger.error("MODEL_DIR %s is not a folder; no models will be served", root)
            return
        for directory in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
            self.models[directory.name] = ServedModel(directory.name, directory)
        if not self.models:
            self.problems["MODEL_DIR"] = f"expected at least one model folder, got none in {root}"
            logger.error("no model folders in MODEL_DIR %s", root)
        default = self._settings.default_model
        if default is not None and default not in self.models:
            self.problems["DEFAULT_MODEL"] = f"expected one of {sorted(self.models)}, got {default!r}"
            logger.error("DEFAULT_MODEL %r is not a folder of MODEL_DIR %s", default, root)

    async def load_all(self) -> None:
        """Load, verify and warm up every discovered model on the device thread, one after the other.

        A model that fails is logged with the offending file and marked failed; the others still load.
        """
        loop = asyncio.get_running_loop()
        executor = self.executor_for(self.device)
        warm_sizes = tuple(sorted({1, min(self._settings.max_batch_size, 8)}))
        for served in self.models.values():
            try:
                runner = await loop.run_in_executor(executor, _load_and_warm, served.directory, self.device, warm_sizes)
            except ArtifactError as exc:
                served.status, served.error = "failed", str(exc)
                logger.error("refused model %r: %s", served.name, exc)
                continue
            except Exception as exc:  # never let one artifact stop the others
                served.status, served.error = "failed", f"{served.directory}: {type(exc).__name__}: {exc}"
                logger.exception("refused model %r", served.name)
                continue
            served.runner = runner
            served.references = References.from_card(runner.card)
            served.batcher = Batcher(
                served.name,
                {ENCODE: runner.encode, DECODE: runner.decode},
                executor,
                max_batch_size=self._settings.max_batch_size,
                max_wait_s=self._settings.max_wait_ms / 1000.0,
                max_queue=self._settings.max_queue,
                metrics=self._metrics,
            )
            served.batcher.start()
            served.status = "ready"
            card = runner.card
            self._metrics.model_info.labels(
                model=served.name,
                version=card.version,
                flow_type=card.flow_type,
                data_kind=card.data_kind,
                dimension=str(card.dimension),
                sha256=card.sha256,
            ).set(1)
            self._metrics.model_ready.labels(model=served.name).set(1)
            logger.info(
                "model %r ready (%s, %s %s) on %s", served.name, card.flow_type, card.data_kind, card.shape, self.device
            )
        self.loading_done = True

    @property
    def ready(self) -> bool:
        """Whether every model folder is loaded, verified and warmed up (and nothing is misconfigured)."""
        return (
            self.loading_done
            and not self.problems
            and bool(self.models)
            and all(served.status == "ready" for served in self.models.values())
        )

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` reports: overall status, each model's status, and why anything failed."""
        failed = {name: served.error for name, served in self.models.items() if served.status == "failed"}
        failed.update(self.problems)
        return {
            "status": "ready" if self.ready else ("loading" if not self.loading_done else "failed"),
            "models": {name: served.status for name, served in self.models.items()},
            "failed": failed,
        }

    def resolve_name(self, name: str | None) -> str:
        """The model a request means: its ``model``, else ``DEFAULT_MODEL``, else the only model.

        Raises:
            InvalidInputError: no name given and no default can be chosen.
        """
        if name is not None:
            return name
        if self._settings.default_model is not None:
            return self._settings.default_model
        if len(self.models) == 1:
            return next(iter(self.models))
        raise InvalidInputError(f"model: expected one of {sorted(self.models)} (no DEFAULT_MODEL is set), got none")

    def get(self, name: str | None) -> ServedModel:
        """The ready model a request means.

        Raises:
            InvalidInputError: no name given and no default.
            ModelNotFoundError: no such model folder.
            UnavailableError: the model is still loading or failed to load.
        """
        resolved = self.resolve_name(name)
        served = self.models.get(resolved)
        if served is None:
            shown = repr(resolved) if len(resolved) <= 60 else repr(resolved[:57] + "...")
            raise ModelNotFoundError(f"model: expected one of {sorted(self.models)}, got {shown}")
        if served.status == "loading":
            raise UnavailableError(f"model {resolved!r} is still loading; expected a ready model", retry_after_s=2)
        if served.status == "failed":
            raise UnavailableError(f"model {resolved!r} failed to load: {served.error}", retry_after_s=None)
        return served

    async def close(self) -> None:
        """Drain every batcher, then stop the executor threads."""
        await asyncio.gather(*(s.batcher.close() for s in self.models.values() if s.batcher is not None))
        for executor in self._executors.values():
            executor.shutdown(wait=True)
        self._executors.clear()


def _configure_torch_thread(threads: int) -> None:
    """Runs once in each device thread: its intra-op parallelism (``TORCH_THREADS``; 0 keeps torch's)."""
    if threads > 0:
        torch.set_num_threads(threads)


def _load_and_warm(directory: Path, device: torch.device, warm_sizes: tuple[int, ...]) -> ModelRunner:
    runner = ModelRunner.load(directory, device)
    runner.warm_up(warm_sizes)
    return runner
