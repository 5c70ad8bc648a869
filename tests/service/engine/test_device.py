"""The DEVICE setting mapped to a torch device."""

from __future__ import annotations

import pytest
import torch


def test_device_setting() -> None:
    from service.engine.runner import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="expected an available device"):
            resolve_device("cuda")
