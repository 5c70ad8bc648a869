"""The scoring maths of the artifact contract (``artifact.scores``): calibration, compression, typicality, latents."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from artifact import scores as anomaly


def brute_force_p_values(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.array([(1 + np.sum(reference >= s)) / (len(reference) + 1) for s in scores])


def test_p_values_follow_the_conformal_formula_and_lie_in_0_1() -> None:
    rng = np.random.default_rng(0)
    reference = np.round(rng.normal(size=200), 2)  # ties on purpose
    scores = np.r_[np.round(rng.normal(size=300), 2), reference[:10], -100.0, 100.0]
    result = anomaly.calibrate(scores, reference, fpr=0.05)
    np.testing.assert_allclose(result.p_value, brute_force_p_values(scores, reference))
    assert np.all(result.p_value > 0) and np.all(result.p_value <= 1)
    assert result.p_value[-2] == 1.0 and result.p_value[-1] == pytest.approx(1 / 201)
    np.testing.assert_allclose(result.percentile, [100 * np.mean(reference < s) for s in scores])
    # the threshold says the same as the p-values: flagged exactly when the score is above it
    assert result.threshold is not None
    np.testing.assert_array_equal(result.is_anomaly, result.p_value <= 0.05)
    np.testing.assert_array_equal(result.is_anomaly, scores > result.threshold)


@pytest.mark.parametrize("n", [19, 99, 500])
@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1])
def test_threshold_is_the_largest_reference_quantile_that_keeps_the_rate(n: int, fpr: float) -> None:
    reference = np.arange(n, dtype=float)
    result = anomaly.calibrate(reference, reference, fpr)
    k = math.floor(fpr * (n + 1) + 1e-9) - 1  # at most k references may lie at or above a flagged score
    if k < 0:
        assert result.threshold is None and not result.is_anomaly.any()
    else:
        assert result.threshold == reference[n - 1 - k]
        # on the reference itself the flagged fraction is floor(fpr (n + 1)) - 1 out of n <= fpr
        assert result.is_anomaly.sum() == k and k / n <= fpr


def test_fpr_below_one_over_n_plus_one_flags_nothing() -> None:
    result = anomaly.calibrate(np.array([1e9]), np.zeros(50), fpr=0.01)
    assert result.threshold is None and not result.is_anomaly[0] and result.p_value[0] == pytest.approx(1 / 51)


def test_calibration_on_exchangeable_data() -> None:
    """Scores of fresh in-distribution items are flagged at the requested rate, within sampling error."""
    rng = np.random.default_rng(1)
    n_ref, n_test, fpr = 1000, 20000, 0.05
    reference, fresh = rng.gamma(2.0, size=n_ref), rng.gamma(2.0, size=n_test)
    flagged = anomaly.calibrate(fresh, reference, fpr).is_anomaly.mean()
    error = math.sqrt(fpr * (1 - fpr) * (1 / n_ref + 1 / n_test))  # test sampling + reference sampling
    assert abs(flagged - fpr) < 3 * error


def test_calibrate_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="reference"):
        anomaly.calibrate(np.zeros(2), np.array([]), 0.05)
    with pytest.raises(ValueError, match="fpr"):
        anomaly.calibrate(np.zeros(2), np.zeros(5), 1.0)


@pytest.mark.parametrize("compressor", anomaly.COMPRESSORS)
def test_compression_lengths_without_headers(compressor: str) -> None:
    rng = np.random.default_rng(0)
    constant = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    noise = rng.integers(0, 256, size=(1, 1, 28, 28), dtype=np.uint8)
    color_noise = rng.integers(0, 256, size=(1, 3, 8, 8), dtype=np.uint8)
    bits = anomaly.compression_bits_per_dim(np.concatenate([constant, noise]), compressor)
    # a constant image costs a few bytes once the ~60 bytes of PNG/zlib framing are gone (0.6 bits/dim)
    assert 0 < bits[0] < 0.15
    # uniform noise is incompressible: about 8 bits per dimension (stored blocks + filter bytes)
    assert 7.9 < bits[1] < 8.4
    assert 7.5 < anomaly.compression_bits_per_dim(color_noise, compressor)[0] < 9.5
    again = anomaly.compression_bits_per_dim(torch.from_numpy(np.concatenate([constant, noise])).float(), compressor)
    np.testing.assert_array_equal(bits, again)  # deterministic, and tensors of floats work alike


def test_compression_refuses_other_shapes_and_compressors() -> None:
    with pytest.raises(ValueError, match="compressor"):
        anomaly.compression_bits_per_dim(np.zeros((1, 1, 4, 4)), "gzip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        anomaly.compression_bits_per_dim(np.zeros((1, 2, 4, 4)), "png")


def test_complexity_is_bits_per_dim_minus_compressed_length() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 1, 8, 8))
    bits = np.array([5.0, 6.0, 7.0])
    expected = bits - anomaly.compression_bits_per_dim(pixels, "deflate")
    np.testing.assert_allclose(anomaly.complexity_scores(bits, pixels, "deflate"), expected)


def test_combined_is_fisher_of_conformal_p_values() -> None:
    complexity, latent = np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 30.0, 20.0, 40.0])
    # an item at 2.5 (complexity) and 35 (latent): 2 of 4 and 1 of 4 references at or above it
    value = anomaly.combined_scores([np.array([2.5]), np.array([35.0])], [complexity, latent])
    np.testing.assert_allclose(value, [-math.log(3 / 5) - math.log(2 / 5)])
    # each reference item against the 3 others, same denominator n + 1 = 5
    leave_one_out = [4 / 5, 3 / 5, 2 / 5, 1 / 5]
    np.testing.assert_allclose(anomaly.leave_one_out_p_values(complexity), leave_one_out)
    np.testing.assert_allclose(anomaly.leave_one_out_p_values(latent), [4 / 5, 2 / 5, 3 / 5, 1 / 5])
    expected = -np.log(leave_one_out) - np.log([4 / 5, 2 / 5, 3 / 5, 1 / 5])
    np.testing.assert_allclose(anomaly.combined_reference([complexity, latent]), expected)


def test_combined_calibration_holds_for_exchangeable_items() -> None:
    """Items drawn like the references are flagged at about ``fpr``, never clearly more (conservative by design)."""
    rng = np.random.default_rng(3)
    n, m, fpr = 500, 20_000, 0.05
    # two correlated parts, as complexity and latent are (both grow with the item's bits/dim)
    shared = rng.normal(size=n + m)
    parts = [shared + rng.normal(size=n + m), 0.5 * shared + rng.normal(size=n + m)]
    references, items = [p[:n] for p in parts], [p[n:] for p in parts]
    calibrated = anomaly.calibrate(
        anomaly.combined_scores(items, references), anomaly.combined_reference(references), fpr
    )
    flagged = float(calibrated.is_anomaly.mean())
    error = math.sqrt(fpr * (1 - fpr) * (1 / m + 1 / n))
    assert fpr - 3 * error < flagged < fpr + 3 * error, (flagged, error)
    assert np.all((calibrated.p_value > 0) & (calibrated.p_value <= 1))


def test_typicality_bootstrap_is_seeded_and_two_sided() -> None:
    reference = np.random.default_rng(0).normal(1.0, 0.1, size=500)
    entropy, bootstrap = anomaly.bootstrap_typicality(reference, batch_size=10)
    entropy_again, bootstrap_again = anomaly.bootstrap_typicality(reference, batch_size=10)
    assert entropy == entropy_again == pytest.approx(reference.mean())
    np.testing.assert_array_equal(bootstrap, bootstrap_again)
    assert bootstrap.shape == (anomaly.BOOTSTRAP_DRAWS,) and np.all(bootstrap >= 0)
    # the bootstrap spread of a batch mean is about sd / sqrt(M)
    assert np.quantile(bootstrap, 0.68) == pytest.approx(0.1 / math.sqrt(10), rel=0.2)
    typical = anomaly.typicality_test(reference[:10], entropy, bootstrap, fpr=0.01)
    too_likely = anomaly.typicality_test(np.full(10, 0.5), entropy, bootstrap, fpr=0.01)
    too_unlikely = anomaly.typicality_test(np.full(10, 1.5), entropy, bootstrap, fpr=0.01)
    assert not typical.calibrated.is_anomaly[0]
    assert too_likely.calibrated.is_anomaly[0] and too_unlikely.calibrated.is_anomaly[0]
    assert too_likely.calibrated.p_value[0] == pytest.approx(1 / (anomaly.BOOTSTRAP_DRAWS + 1))


def test_typicality_flags_exchangeable_batches_at_the_rate_and_shifted_ones_both_ways() -> None:
    """4,000 batches drawn like the reference: flagged at fpr within 3 standard errors (test batches, bootstrap
    draws and reference items); batches whose mean is 3 standard errors too low or too high: mostly flagged."""
    rng = np.random.default_rng(0)
    n, m, size, fpr = 2000, 4000, 10, 0.05
    reference = rng.gamma(4.0, 0.5, size=n)  # skewed and positive, as bits/dim are
    entropy, bootstrap = anomaly.bootstrap_typicality(reference, batch_size=size)

    def flag_rate(batches: np.ndarray) -> float:
        flags = [anomaly.typicality_test(batch, entropy, bootstrap, fpr).calibrated.is_anomaly[0] for batch in batches]
        return float(np.mean(flags))

    fresh = rng.gamma(4.0, 0.5, size=(m, size))
    error = math.sqrt(fpr * (1 - fpr) * (1 / m + 1 / anomaly.BOOTSTRAP_DRAWS + 1 / n))
    assert 3 * error < 0.025
    assert abs(flag_rate(fresh) - fpr) < 3 * error
    shift = 3 * reference.std() / math.sqrt(size)
    assert flag_rate(fresh[:500] - shift) > 0.75 and flag_rate(fresh[:500] + shift) > 0.75


def test_latent_score_is_the_gaussian_negative_log_density_per_dimension() -> None:
    gaussian = anomaly.LatentGaussian(mean=np.array([1.0, -2.0]), std=np.array([2.0, 0.5]))
    z = np.array([[1.0, -2.0], [3.0, -2.0], [1.0, -1.5]])
    # at the mean: only the log σ term, mean(log 2, log 0.5) = 0; one σ away in one of two dims: 0.5 · 1² / 2
    np.testing.assert_allclose(anomaly.latent_scores(z, gaussian), [0.0, 0.25, 0.25], atol=1e-12)
    # against scipy-free brute force: −log N(z; μ, diag σ²) / D − 0.5 log 2π
    points = np.random.default_rng(0).normal(size=(5, 2))
    log_density = -0.5 * (((points - gaussian.mean) / gaussian.std) ** 2 + np.log(2 * np.pi * gaussian.std**2))
    np.testing.assert_allclose(
        anomaly.latent_scores(torch.from_numpy(points), gaussian), -log_density.mean(axis=1) - 0.5 * np.log(2 * np.pi)
    )


def test_latent_gaussian_fit_is_the_maximum_likelihood_one() -> None:
    latents = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 13.0]])
    gaussian = anomaly.fit_latent_gaussian(latents)
    np.testing.assert_allclose(gaussian.mean, [2.0, 11.0])
    np.testing.assert_allclose(gaussian.std, [math.sqrt(8 / 3), math.sqrt(2.0)])
    for bad in (latents[:1], np.array([[0.0, 1.0], [0.0, 2.0]]), np.array([[np.nan, 1.0], [0.0, 2.0]])):
        with pytest.raises(ValueError, match="expected"):
            anomaly.fit_latent_gaussian(bad)
    with pytest.raises(ValueError, match="dimension 2"):
        anomaly.latent_scores(np.zeros((1, 3)), gaussian)


def test_coarse_score_reads_the_trailing_latent_coordinates_under_the_prior() -> None:
    z = np.array([[5.0, -7.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    # the last two coordinates only: 0.5 · mean(1², 3²) = 2.5; the first two never count
    np.testing.assert_allclose(anomaly.coarse_scores(z, 2), [2.5, 0.0])
    points = np.random.default_rng(1).normal(size=(4, 6))
    log_density = -0.5 * (points[:, 2:] ** 2 + np.log(2 * np.pi))  # N(0, 1) per coordinate
    np.testing.assert_allclose(
        anomaly.coarse_scores(torch.from_numpy(points), 4), -log_density.mean(axis=1) - 0.5 * np.log(2 * np.pi)
    )
    for bad in (0, 7):
        with pytest.raises(ValueError, match=r"coarse_dims in \[1, 6\]"):
            anomaly.coarse_scores(points, bad)
