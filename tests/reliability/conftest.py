"""Fixtures of the reliability tests: tiny artifacts (good and faulty) and the asyncio backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.faulty import write_faulty_artifact
from tests.service.artifacts import build_store


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits`` (RealNVP, 1x8x8 images) and ``moons`` (NVPNet, D=2), untrained and exported."""
    return build_store(tmp_path_factory.mktemp("reliability-store"))


@pytest.fixture(scope="session")
def faulty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``faulty`` (D=2): raises or returns NaN for a whole batch when a sentinel value is in it (see faulty.py)."""
    root = tmp_path_factory.mktemp("faulty-store")
    write_faulty_artifact(root / "faulty")
    return root
