"""Reference scores written at export (``training.export``), computed as the service computes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact import scores as anomaly
from tests.support.anomaly_store import REFERENCE_SIZE, bar_images, moon_points


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


def test_export_stores_the_coarse_score_of_the_last_scale(anomaly_store: Path) -> None:
    scores = json.loads((anomaly_store / "digits" / "card.json").read_text())["reference_scores"]
    module = torch.jit.load(str(anomaly_store / "digits" / "model.ts"))
    # digits is RealNVP(1, 8, num_scales=2): the first scale squeezes 1x8x8 to 4x4x4 and factors out half, so the
    # last scale's output, the end of the latent, is 2x4x4 = 32 of the 64 coordinates
    assert scores["coarse_dims"] == 32
    reference = torch.from_numpy(bar_images(REFERENCE_SIZE, seed=1)).float() + 0.5
    with torch.no_grad():
        z = module.encode(reference)[0].double().numpy()
    np.testing.assert_allclose(scores["coarse"], 0.5 * (z[:, 32:] ** 2).mean(axis=1), atol=1e-5)
    moons = json.loads((anomaly_store / "moons" / "card.json").read_text())["reference_scores"]
    assert "coarse" not in moons and "coarse_dims" not in moons


def test_vector_exports_have_no_complexity(anomaly_store: Path) -> None:
    scores = json.loads((anomaly_store / "moons" / "card.json").read_text())["reference_scores"]
    assert "complexity" not in scores and "complexity_compressor" not in scores
