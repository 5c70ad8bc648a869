"""``artifact.reference_scores``: the card's reference block, computed with the contract's own score maths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from artifact import bits_per_dim, reference_scores, scores


def test_bits_per_dim_is_nats_over_d_ln2_for_floats_and_arrays() -> None:
    assert bits_per_dim(-784 * math.log(2.0), 784) == pytest.approx(1.0)
    np.testing.assert_allclose(bits_per_dim(np.array([-2.0, 0.0]), 2), [1 / math.log(2.0), 0.0])


def test_image_block_holds_every_score_of_the_reference_items() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 1, 4, 4)).astype(np.float32)
    nats, latents = -rng.uniform(10, 20, size=6), rng.normal(size=(6, 16))
    block = reference_scores(nats, latents, pixels)
    bits = -nats / (16 * math.log(2.0))
    np.testing.assert_allclose(block["bits_per_dim"], bits, atol=1e-6)
    np.testing.assert_allclose(block["log_likelihood"], nats, atol=1e-6)
    np.testing.assert_allclose(block["complexity"], scores.complexity_scores(bits, pixels, "png"), atol=1e-6)
    gaussian = scores.fit_latent_gaussian(latents)
    np.testing.assert_allclose(block["latent_mean"], gaussian.mean)
    np.testing.assert_allclose(block["latent"], scores.latent_scores(latents, gaussian), atol=1e-6)
    assert block["complexity_compressor"] == scores.DEFAULT_COMPRESSOR and block["split"] == "val"
    assert "coarse" not in block and "coarse_dims" not in block  # a flow without scales
    with_scales = reference_scores(nats, latents, pixels, coarse_dims=4)
    assert with_scales["coarse_dims"] == 4
    np.testing.assert_allclose(with_scales["coarse"], 0.5 * (latents[:, -4:] ** 2).mean(axis=1), atol=1e-6)


def test_vector_block_has_no_complexity() -> None:
    block = reference_scores(np.array([-1.0, -2.0, -3.0]), np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]), None)
    assert "complexity" not in block and "complexity_compressor" not in block
    assert len(block["latent_std"]) == 2 and all(std > 0 for std in block["latent_std"])
