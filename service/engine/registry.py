"""The models of ``MODEL_DIR``: discovery, loading, hot reload, versions, readiness, and lookup by name.

Each sub-folder ``NAME`` of ``MODEL_DIR`` is one model; what it holds now is one version of it, the card's
``version``. The folder's current version answers requests that name the model (``"mnist"``); a request may pin
one (``"mnist@1.0.0"``, or ``/v2/models/mnist/versions/1.0.0``), which reaches any version still loaded.

Hot reload (``reload``, called every ``RELOAD_INTERVAL_S`` and by ``POST /admin/reload``): a folder whose files
changed is loaded beside the version serving, verified (sha256, card, methods) and warmed up on a thread of its
own, then swapped in at once (one dict assignment on the event loop: a request gets the old version or the new
one, never parts of both). A refused artifact changes nothing that serves: the previous version keeps answering
and the refusal is reported (``reload_errors``, ``/readyz``, ``/models``, ``realnvp_model_reloads_total``). A
version replaced or removed leaves the tables at once, so new requests no longer reach it; the requests holding
it finish (their leases), its queue drains (``Batcher.close``), and only then is it dropped.

Which versions stay: the ``KEEP_MODEL_VERSIONS`` most recently loaded ones per name (1 by default: a replaced
version drains away). A new version carrying the same version string as a loaded one takes its place (the folder
is the truth; ``/models`` shows the sha256 of each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from artifact import ArtifactError
from service.core.config import Settings
from service.core.errors import InvalidInputError, ModelNotFoundError, UnavailableError
from service.core.metrics import Metrics
from service.engine.batcher import Batcher
from service.engine.buckets import warm_batch_sizes
from service.engine.reload import ModelFolder, ReloadReport, Scan, same_artifact, scan_model_dir
from service.engine.runner import ModelRunner, resolve_device
from service.engine.versions import PIN, ServedModel, info_labels
from service.scoring.references import References

logger = logging.getLogger(__name__)

ENCODE = "encode"
DECODE = "decode"
REMOVAL_RECHECK_S = 0.1  # a folder must still be missing this long after a look sees it gone
RELOAD_THREAD = "reload"  # new versions load and warm up on a thread of their own: serving goes on meanwhile


class ModelRegistry:
    """Finds, loads, reloads and hands out the models; one executor thread per device, one batcher per version.

    Args:
        settings: the app's settings.
        metrics: the app's metrics.
        on_retired: called with a model's name when the version answering it changes or the model is removed
            (the drift gauges follow the serving version).

    Attributes:
        models: name → the version answering requests that name no version (or, before any version of the
            folder loaded, a ``loading``/``failed`` stand-in).
        versions: name → version → the loaded versions still reachable by pinning, oldest first.
        reload_errors: name → why the folder's newest contents were refused while an older version serves.
        problems: what is wrong with the configuration (``MODEL_DIR``, ``DEFAULT_MODEL``).
    """

    def __init__(self, settings: Settings, metrics: Metrics, on_retired: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._on_retired = on_retired
        self.device = resolve_device(settings.device)
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self.models: dict[str, ServedModel] = {}
        self.versions: dict[str, dict[str, ServedModel]] = {}
        self.reload_errors: dict[str, str] = {}
        self.problems: dict[str, str] = {}
        self.loading_done = False
        self._scan = Scan()
        self._tried: dict[str, tuple[Any, ...]] = {}  # name → fingerprint of the contents last loaded or refused
        self._lock = asyncio.Lock()  # one look at MODEL_DIR at a time (polling and POST /admin/reload)
        self._draining: dict[ServedModel, asyncio.Task[None]] = {}

    def executor_for(self, device: torch.device | str) -> ThreadPoolExecutor:
        """The single worker thread that runs all torch work of ``device`` (``RELOAD_THREAD``: reloads' loading)."""
        key = str(device)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"torch-{key}",
                initializer=_configure_torch_thread,
                initargs=(self._settings.torch_threads,),
            )
        return self._executors[key]

    # ------------------------------------------------------------------------------------------ discovery
    def discover(self) -> None:
        """List the model folders (every non-hidden sub-folder of ``MODEL_DIR``); each starts ``loading``."""
        self._scan = scan_model_dir(self._settings.model_dir)
        self._note_problems(self._scan)
        for name, folder in self._scan.folders.items():
            self.models[name] = ServedModel(name, folder.path)

    def _note_problems(self, scan: Scan) -> None:
        """Record (and log once) what is wrong with ``MODEL_DIR`` and ``DEFAULT_MODEL`` after a look."""
        found: dict[str, str] = {}
        if scan.problem is not None:
            found["MODEL_DIR"] = scan.problem
        default = self._settings.default_model
        if default is not None and default not in scan.folders:
            found["DEFAULT_MODEL"] = f"expected one of {sorted(scan.folders)}, got {default!r}"
        for key, problem in found.items():
            if self.problems.get(key) != problem:
                logger.error("%s: %s", key, problem)
        self.problems = found

    async def load_all(self) -> None:
        """Load, verify and warm up every discovered model on the device thread, one after the other.

        A model that fails is logged with the offending file and marked failed; the others still load.
        """
        async with self._lock:
            for folder in self._scan.folders.values():
                await self._try_folder(folder, self.executor_for(self.device))
        self.loading_done = True

    async def run(self) -> None:
        """Load everything, then look at ``MODEL_DIR`` every ``RELOAD_INTERVAL_S`` (never when it is 0)."""
        await self.load_all()
        interval = self._settings.reload_interval_s
        while interval > 0:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Exception:  # the next look may fare better; serving goes on meanwhile
                logger.exception("looking for changes in MODEL_DIR failed")

    async def reload(self) -> ReloadReport:
        """Look at ``MODEL_DIR`` now: load new and changed folders (each verified first), drop removed ones."""
        async with self._lock:
            scan = scan_model_dir(self._settings.model_dir)
            if any(name not in scan.folders for name in self.models):
                # An export renames the old folder aside, then the new one in: look again before removing.
                await asyncio.sleep(REMOVAL_RECHECK_S)
                scan = scan_model_dir(self._settings.model_dir)
            self._note_problems(scan)
            report = ReloadReport()
            if not self._settings.model_dir.is_dir():  # a lost mount is not an instruction to drop every model
                return report
            for name in [name for name in self.models if name not in scan.folders]:
                self._remove(name)
                report.removed.append(name)
            for folder in scan.folders.values():
                if self._tried.get(folder.name) == folder.fingerprint:
                    continue
                outcome = await self._try_folder(folder, self.executor_for(RELOAD_THREAD))
                self._report(report, folder.name, outcome)
            return report

    def _report(self, report: ReloadReport, name: str, outcome: str) -> None:
        if outcome == "failed":
            report.failed[name] = self.reload_errors.get(name) or self.models[name].error or "refused"
        elif outcome == "unchanged":
            report.unchanged.append(name)
        else:
            (report.added if outcome == "added" else report.replaced).append(f"{name}{PIN}{self.models[name].version}")

    # ------------------------------------------------------------------------------------------ versions
    async def _try_folder(self, folder: ModelFolder, executor: ThreadPoolExecutor) -> str:
        """Load the folder's contents as a new version and swap it in.

        Returns:
            ``added``, ``replaced``, ``unchanged`` (the very artifact already served) or ``failed``.
        """
        self._tried[folder.name] = folder.fingerprint
        loop = asyncio.get_running_loop()
        current = self._current(folder.name)
        warm_sizes = warm_batch_sizes(self._settings.max_batch_size, self.device)
        try:
            if folder.refusal is not None:
                raise ArtifactError(folder.refusal)
            if current is not None and await loop.run_in_executor(executor, same_artifact, folder.source, current.card):
                self.reload_errors.pop(folder.name, None)
                return "unchanged"
            runner = await loop.run_in_executor(executor, _load_and_warm, folder.source, self.device, warm_sizes)
        except Exception as exc:  # never let one artifact stop the others, nor replace a good version
            self._refuse(folder, current, exc)
            return "failed"
        self._serve(folder, runner, current)
        return "added" if current is None else "replaced"

    def _current(self, name: str) -> ServedModel | None:
        served = self.models.get(name)
        return served if served is not None and served.status == "ready" else None

    def _refuse(self, folder: ModelFolder, current: ServedModel | None, exc: Exception) -> None:
        if isinstance(exc, ArtifactError):
            error = str(exc)
            logger.error("refused model %r: %s", folder.name, error)
        else:
            error = f"{folder.path}: {type(exc).__name__}: {exc}"
            logger.exception("refused model %r", folder.name)
        self._metrics.model_reloads.labels(model=folder.name, outcome="failed").inc()
        if current is None:  # a model that was never served: it appears now, as failed
            stand_in = self.models.setdefault(folder.name, ServedModel(folder.name, folder.path))
            stand_in.status, stand_in.error = "failed", error
            return
        self.reload_errors[folder.name] = f"refused new contents, still serving version {current.version!r}: {error}"
        logger.error("model %r keeps serving version %r", folder.name, current.version)

    def _serve(self, folder: ModelFolder, runner: ModelRunner, current: ServedModel | None) -> None:
        """Make a loaded, verified, warmed-up version the one that answers ``folder.name``; retire what it ends."""
        card = runner.card
        served = ServedModel(folder.name, folder.path, status="ready", runner=runner)
        served.references = References.from_card(card)
        served.batcher = Batcher(
            served.name,
            {ENCODE: runner.encode, DECODE: runner.decode},
            self.executor_for(self.device),
            max_batch_size=self._settings.max_batch_size,
            max_wait_s=self._settings.max_wait_ms / 1000.0,
            max_queue=self._settings.max_queue,
            max_in_flight=self._settings.max_batches_in_flight,
            metrics=self._metrics,
        )
        served.batcher.start()
        versions = self.versions.setdefault(served.name, {})
        ended = [versions.pop(card.version)] if card.version in versions else []  # same version: the folder wins
        versions[card.version] = served
        while len(versions) > self._settings.keep_model_versions:
            ended.append(versions.pop(next(iter(versions))))
        self.models[served.name] = served  # the swap: requests from here on get the new version
        self.reload_errors.pop(served.name, None)
        for old in ended:  # before the new series: a same-version replacement may carry the very same labels
            self._retire(old)
        self._metrics.model_info.labels(**info_labels(served)).set(1)
        self._metrics.model_ready.labels(model=served.name).set(1)
        self._metrics.model_reloads.labels(model=served.name, outcome="added" if current is None else "replaced").inc()
        if current is not None and self._on_retired is not None:
            self._on_retired(served.name)
        logger.info(
            "model %r version %r ready (%s, %s %s, sha256 %s) on %s",
            served.name,
            card.version,
            card.flow_type,
            card.data_kind,
            card.shape,
            card.sha256[:12],
            self.device,
        )

    def _remove(self, name: str) -> None:
        """The folder is gone: its versions stop taking requests at once and drain."""
        self.models.pop(name, None)
        versions = self.versions.pop(name, {})
        self.reload_errors.pop(name, None)
        self._tried.pop(name, None)
        with contextlib.suppress(KeyError):
            self._metrics.model_ready.remove(name)
        self._metrics.model_reloads.labels(model=name, outcome="removed").inc()
        if self._on_retired is not None:
            self._on_retired(name)
        for served in versions.values():
            self._retire(served)
        logger.info("model %r removed from MODEL_DIR; its versions drain", name)

    def _retire(self, served: ServedModel) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.model_info.remove(*info_labels(served).values())
        self._draining[served] = asyncio.get_running_loop().create_task(
            self._drain(served), name=f"drain-{served.name}-{served.version}"
        )

    async def _drain(self, served: ServedModel) -> None:
        released = await served.drain(self._settings.request_timeout_s)
        if not released:
            logger.warning("model %r version %r dropped with requests still holding it", served.name, served.version)
        self._draining.pop(served, None)
        if served.name not in self.models:  # removed, not replaced: its last queue figure goes too
            with contextlib.suppress(KeyError):
                self._metrics.queue_depth.remove(served.name)
        logger.info("model %r version %r drained and dropped", served.name, served.version)

    # ------------------------------------------------------------------------------------------ lookup
    @property
    def ready(self) -> bool:
        """Whether every model folder has a version serving (and nothing is misconfigured)."""
        return (
            self.loading_done
            and not self.problems
            and bool(self.models)
            and all(served.status == "ready" for served in self.models.values())
        )

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` reports: overall status, each model's status, and why anything failed.

        A refused reload is named in ``failed`` while the status stays ``ready``: the older version serves.
        """
        failed = {name: served.error for name, served in self.models.items() if served.status == "failed"}
        failed.update(self.reload_errors)
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

    def get(self, name: str | None, version: str | None = None) -> ServedModel:
        """The ready version a request means: ``name`` (``NAME`` or ``NAME@VERSION``) and ``version``.

        Raises:
            InvalidInputError: no name given and no default.
            ModelNotFoundError: no such model folder, or no such version loaded (the loaded ones are named).
            UnavailableError: the model is still loading or failed to load.
        """
        resolved = self.resolve_name(name)
        if version is None and resolved not in self.models and PIN in resolved:
            resolved, version = resolved.rsplit(PIN, 1)
        served = self.models.get(resolved)
        if served is None:
            raise ModelNotFoundError(f"model: expected one of {sorted(self.models)}, got {_shown(resolved)}")
        if version is not None:
            loaded = self.versions.get(resolved, {})
            if version in loaded:
                return loaded[version]
            if served.status == "ready":
                raise ModelNotFoundError(
                    f"version: expected one of {list(loaded)} for model {resolved!r}, got {_shown(version)}"
                )
        if served.status == "loading":
            raise UnavailableError(f"model {resolved!r} is still loading; expected a ready model", retry_after_s=2)
        if served.status == "failed":
            raise UnavailableError(f"model {resolved!r} failed to load: {served.error}", retry_after_s=None)
        return served

    def is_default(self, served: ServedModel) -> bool:
        """Whether ``served`` is the version answering requests that name no version."""
        return self.models.get(served.name) is served

    async def close(self) -> None:
        """Drain every batcher (retiring versions' too, without waiting for their leases), stop the threads."""
        retiring = list(self._draining)
        for task in self._draining.values():
            task.cancel()
        await asyncio.gather(*self._draining.values(), return_exceptions=True)
        serving = [served for versions in self.versions.values() for served in versions.values()]
        batchers = {id(s.batcher): s.batcher for s in (*self.models.values(), *serving, *retiring) if s.batcher}
        await asyncio.gather(*(batcher.close() for batcher in batchers.values()))
        for executor in self._executors.values():
            executor.shutdown(wait=True)
        self._executors.clear()


def _shown(text: str) -> str:
    """A client-sent name as echoed in errors: quoted, at most 60 characters."""
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")


def _configure_torch_thread(threads: int) -> None:
    """Runs once in each device thread: its intra-op parallelism (``TORCH_THREADS``; 0 keeps torch's)."""
    if threads > 0:
        torch.set_num_threads(threads)


def _load_and_warm(directory: Path, device: torch.device, warm_sizes: tuple[int, ...]) -> ModelRunner:
    runner = ModelRunner.load(directory, device)
    runner.warm_up(warm_sizes)
    return runner
