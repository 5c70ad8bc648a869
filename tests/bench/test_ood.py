"""``bench/ood.py`` on the bundled ``mnist`` with two families, both protocols (a smoke test of the benchmark)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import ood

MNIST = Path(__file__).resolve().parents[2] / "model_store" / "mnist"


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("protocol", ["test", "development"])
def test_two_families_score_with_every_part_of_the_default(tmp_path: Path, protocol: str, capsys) -> None:
    out = tmp_path / "ood.json"
    argv = ["--model-dir", str(MNIST), "--families", "noise", "shifted", "--protocol", protocol, "--json", str(out)]
    assert ood.main([*argv, "--threads", "1"]) == 0
    numbers = json.loads(out.read_text())
    assert numbers["protocol"] == protocol and numbers["default_score"] == "combined"
    assert set(numbers["families"]) == {"noise", "shifted"} and numbers["test_digits"] == 500
    noise = numbers["auroc"][numbers["families"]["noise"]["label"]]
    assert {"coarse", "combined", "combined (no coarse)", "latent"} <= set(noise)
    assert noise["combined"] > 0.99 and all(0.0 <= value <= 1.0 for value in noise.values())
    assert set(numbers["flagged"][next(iter(numbers["flagged"]))]) >= {"coarse", "combined", "combined (no coarse)"}
    assert f"{protocol} protocol" in capsys.readouterr().out
