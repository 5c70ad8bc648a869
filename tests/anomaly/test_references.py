"""Reference scores at export (``training.export``) and in cards (``service.card``), old cards included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service import anomaly
from service.card import ModelCard
from service.config import BUNDLED_MODEL_DIR
from service.runner import read_card
from tests.anomaly.conftest import REFERENCE_SIZE, bar_images, moon_points


def test_export_stores_complexity_as_the_service_computes_it(anomaly_store: Path) -> None:
    card = json.loads((anomaly_store / "digits" / "card.json").read_text())
    scores = card["reference_scores"]
    assert scores["complexity_compressor"] == anomaly.DEFAULT_COMPRESSOR
    assert len(scores["complexity"]) == len(scores["bits_per_dim"]) == REFERENCE_SIZE
    reference = bar_images(REFERENCE_SIZE, seed=1)
    module = torch.jit.load(str(anomaly_store / "digits" / "model.ts"))
    with torch.no_grad():
        bits = -module.log_prob(torch.from_numpy(reference).float()).double() / (64 * np.log(2))
    expected = anomaly.complexity_scores(bits, reference, anomaly.DEFAULT_COMPRESSOR)
    np.testing.assert_allclose(scores["complexity"], expected, atol=1e-5)


@pytest.mark.parametrize("name", ["digits", "moons"])
def test_export_stores_the_latent_gaussian_of_the_reference_latents(anomaly_store: Path, name: str) -> None:
    scores = json.loads((anomaly_store / name / "card.json").read_text())["reference_scores"]
    module = torch.jit.load(str(anomaly_store / name / "model.ts"))
    if name == "digits":  # images are encoded at their bin centre, as for the log-likelihood
        reference = torch.from_numpy(bar_images(REFERENCE_SIZE, seed=1)).float() + 0.5
    else:
        reference = torch.from_numpy(moon_points(REFERENCE_SIZE, seed=1))
    with torch.no_grad():
        z = module.encode(reference)[0].double().numpy()
    np.testing.assert_allclose(scores["latent_mean"], z.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(scores["latent_std"], z.std(axis=0), rtol=1e-5)
    gaussian = anomaly.LatentGaussian(np.array(scores["latent_mean"]), np.array(scores["latent_std"]))
    np.testing.assert_allclose(scores["latent"], anomaly.latent_scores(z, gaussian), atol=1e-5)


def test_vector_exports_have_no_complexity(anomaly_store: Path) -> None:
    scores = json.loads((anomaly_store / "moons" / "card.json").read_text())["reference_scores"]
    assert "complexity" not in scores and "complexity_compressor" not in scores


@pytest.mark.parametrize("name", ["moons", "bimodal", "mnist"])
def test_bundled_cards_still_load(name: str) -> None:
    if not (BUNDLED_MODEL_DIR / name / "card.json").is_file():
        pytest.skip(f"no bundled {name} model")
    card = read_card(BUNDLED_MODEL_DIR / name)
    assert card.reference_scores is not None and len(card.reference_scores.bits_per_dim) > 0


def card_with(scores: dict) -> dict:
    return {
        "format_version": 1, "name": "x", "version": "1", "flow_type": "RealNVP", "data_kind": "image",
        "shape": [1, 2, 2], "dimension": 4, "value_range": [0, 255], "sha256": "0" * 64, "reference_scores": scores,
    }  # fmt: skip


def test_card_checks_the_reference_arrays() -> None:
    base = {"split": "val", "log_likelihood": [-1.0, -2.0], "bits_per_dim": [1.0, 2.0]}
    assert ModelCard.model_validate_json(json.dumps(card_with(base))).reference_scores.complexity is None  # an old card
    good = {**base, "complexity": [0.1, 0.2], "complexity_compressor": "png"}
    assert ModelCard.model_validate_json(json.dumps(card_with(good))).reference_scores.complexity == [0.1, 0.2]
    latent = {**base, "latent": [0.1, 0.2], "latent_mean": [0.0] * 4, "latent_std": [1.0] * 4}
    assert ModelCard.model_validate_json(json.dumps(card_with(latent))).reference_scores.latent_std == [1.0] * 4
    for bad, message in (
        ({**base, "complexity": [0.1]}, "expected 2 values and a complexity_compressor"),
        ({**base, "complexity": [0.1, 0.2]}, "complexity_compressor"),
        ({**good, "complexity_compressor": "gzip"}, "complexity_compressor"),
        ({**base, "bits_per_dim": [1.0]}, "as many log_likelihood as bits_per_dim"),
        ({**base, "bits_per_dim": [1.0, float("nan")]}, "finite"),
        ({**base, "latent": [0.1, 0.2]}, "latent, latent_mean and latent_std together"),
        ({**base, "latent": [0.1], "latent_mean": [0.0] * 4, "latent_std": [1.0] * 4}, "expected 2 values"),
        ({**base, "latent": [0.1, 0.2], "latent_mean": [0.0] * 4, "latent_std": [1.0, 1.0, 1.0, 0.0]}, "positive"),
        ({**base, "latent": [0.1, 0.2], "latent_mean": [0.0] * 3, "latent_std": [1.0] * 3}, "the dimension"),
    ):
        with pytest.raises(ValueError, match=message):
            ModelCard.model_validate_json(json.dumps(card_with(bad)))
