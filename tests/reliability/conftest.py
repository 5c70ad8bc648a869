"""Fixtures of the reliability tests: a faulty artifact (good ones come from the root conftest), a key-compare spy."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

import service.api.deps
from tests.reliability.faulty import write_faulty_artifact


@pytest.fixture(scope="session")
def faulty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``faulty`` (D=2): raises or returns NaN for a whole batch when a sentinel value is in it (see faulty.py)."""
    root = tmp_path_factory.mktemp("faulty-store")
    write_faulty_artifact(root / "faulty")
    return root


@pytest.fixture
def key_comparisons(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every ``(token, key)`` pair the service's bearer checks hand to ``hmac.compare_digest``, in order."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.api.deps.hmac, "compare_digest", spy)
    return compared
