"""Fixtures of the reliability tests: a faulty artifact (the good ones come from the root conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.faulty import write_faulty_artifact


@pytest.fixture(scope="session")
def faulty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``faulty`` (D=2): raises or returns NaN for a whole batch when a sentinel value is in it (see faulty.py)."""
    root = tmp_path_factory.mktemp("faulty-store")
    write_faulty_artifact(root / "faulty")
    return root
