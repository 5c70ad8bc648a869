"""Fixtures shared by the whole suite: the asyncio backend and the stores of tiny exported artifacts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.support.anomaly_store import build_anomaly_store
from tests.support.artifacts import build_store
from tests.support.inprocess import serve_in_process


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped on a host without a CUDA device (the suite passes on both)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits`` (RealNVP, 1x8x8 images) and ``moons`` (NVPNet, D=2), untrained and exported."""
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def anomaly_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits``, ``moons`` and ``legacy`` artifacts with reference scores of ``REFERENCE_SIZE`` items."""
    return build_anomaly_store(tmp_path_factory.mktemp("anomaly_store"))


@pytest.fixture(scope="module")
async def anomaly_client(anomaly_store: Path) -> AsyncIterator[httpx.AsyncClient]:
    """One app serving the anomaly store (items up to 512 per request, for the calibration tests)."""
    async with serve_in_process(
        anomaly_store, max_batch_size=64, max_samples=512, max_queue=1024, torch_threads=1
    ) as client:
        assert (await client.get("/readyz")).status_code == 200
        yield client
