"""One loaded version of a model, and the leases that let a replaced or removed version finish its requests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from artifact import ModelCard
from service.engine.batcher import Batcher
from service.engine.runner import ModelRunner
from service.scoring.references import References

ModelStatus = Literal["loading", "ready", "failed"]
PIN = "@"  # "mnist@1.0.0": model mnist, version 1.0.0


@dataclass(eq=False)
class ServedModel:
    """One version of a model: a folder's contents as loaded, and what became of them.

    A request holds a lease on the version it was handed (``acquire``, ``release``), so that a version replaced
    or removed meanwhile is dropped only after every request using it has finished.
    """

    name: str
    directory: Path
    status: ModelStatus = "loading"
    error: str | None = None
    runner: ModelRunner | None = None
    batcher: Batcher | None = None
    references: References | None = None
    leases: int = 0
    _released: asyncio.Event | None = field(default=None, repr=False)

    @property
    def card(self) -> ModelCard:
        """The card of a ready model."""
        assert self.runner is not None, "only ready models have a verified card"
        return self.runner.card

    @property
    def version(self) -> str:
        """The card's version of a ready model."""
        return self.card.version

    def acquire(self) -> None:
        """A request starts using this version."""
        self.leases += 1

    def release(self) -> None:
        """A request that acquired this version is done with it."""
        self.leases -= 1
        if self.leases <= 0 and self._released is not None:
            self._released.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request holds this version (at most ``timeout_s``), then run its queue dry and stop.

        Returns:
            Whether every request had released it in time.
        """
        released = True
        if self.leases > 0:
            self._released = asyncio.Event()
            try:
                await asyncio.wait_for(self._released.wait(), timeout_s)
            except asyncio.TimeoutError:
                released = False
        if self.batcher is not None:
            await self.batcher.close()
        return released


def info_labels(served: ServedModel) -> dict[str, str]:
    """The ``realnvp_model_info`` labels of a version, in the gauge's label order."""
    card = served.card
    return {
        "model": served.name,
        "version": card.version,
        "flow_type": card.flow_type,
        "data_kind": card.data_kind,
        "dimension": str(card.dimension),
        "sha256": card.sha256,
    }
