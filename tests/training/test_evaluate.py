"""Held-out likelihoods: the k = 1 standard figure and the importance-weighted bound, against what is known exactly.

A flow whose transform is a per-pixel affine map has a Gaussian density ``N(μ_d, σ_d²)`` per pixel, so the
discrete probability of an 8-bit image is known in closed form:
``P(x) = ∏_d [Φ((x_d + 1 − μ_d) / σ_d) − Φ((x_d − μ_d) / σ_d)]`` (the density integrated over the pixel's unit
bin). The importance-weighted estimate ``log (1/k) Σ_i p(x + u_i)`` must tighten towards it as ``k`` grows.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from models import Flow, NVPNet, RealNVP, Transform
from training.evaluate import held_out_log_likelihoods, importance_weighted_log_likelihoods, log_likelihoods

from .conftest import tiny_images

MEAN = torch.tensor([100.3, 100.8, 101.5, 99.9], dtype=torch.float64).view(1, 1, 2, 2)
SCALE = torch.tensor([0.6, 0.9, 1.5, 0.4], dtype=torch.float64).view(1, 1, 2, 2)


class PixelAffine(Transform):
    """``z = (v − μ) / σ`` per pixel: the data density is ``N(μ, diag σ²)``, the log-det ``−Σ log σ``."""

    def __init__(self, mean: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("scale", scale.float())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.mean) / self.scale
        return z, -self.scale.log().sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * self.scale + self.mean


def gaussian_image_flow() -> Flow:
    return Flow(PixelAffine(MEAN, SCALE), event_shape=[1, 2, 2], data_kind="image").eval()


def exact_log_probability(items: Tensor) -> Tensor:
    """``log P(x)``, float64 ``(N,)``: each pixel's Gaussian mass over its bin ``[x, x + 1)``."""
    x = items.double()
    upper = torch.special.ndtr((x + 1 - MEAN) / SCALE)
    lower = torch.special.ndtr((x - MEAN) / SCALE)
    return (upper - lower).log().flatten(1).sum(1)


def expected_one_draw(items: Tensor) -> Tensor:
    """``E_u[log p(x + u)]``, ``u ~ U[0, 1)^D``, float64 ``(N,)``: what k = 1 estimates on average.

    ``E[(x + u − μ)²] = ((x + 1 − μ)³ − (x − μ)³) / 3`` per pixel.
    """
    a, b = (items.double() - MEAN) / SCALE, (items.double() + 1 - MEAN) / SCALE
    mean_square = (b**3 - a**3) / (3 * (b - a))  # E[z²] for z uniform on [a, b)
    per_pixel = -0.5 * mean_square - SCALE.log() - 0.5 * math.log(2 * math.pi)
    return per_pixel.flatten(1).sum(1)


def gaussian_items(count: int, seed: int = 0) -> Tensor:
    """8-bit images drawn from the flow itself: ``floor(v)``, ``v ~ N(μ, σ²)`` per pixel."""
    generator = torch.Generator().manual_seed(seed)
    return (MEAN + SCALE * torch.randn(count, 1, 2, 2, generator=generator, dtype=torch.float64)).floor()


def draws_by_hand(flow: Flow, items: Tensor, samples: int, seed: int) -> Tensor:
    """``(k, N)`` log-likelihoods of the k dequantization draws the estimator takes (one batch: same noise)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.stack(
            [
                flow.log_prob(items.float(), noise=torch.rand(items.shape, generator=generator)).double()
                for _ in range(samples)
            ]
        )


def realnvp() -> Flow:
    """A small untrained RealNVP moved off its identity initialisation."""
    torch.manual_seed(0)
    flow = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=1)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return flow.eval()


@pytest.mark.parametrize("make_flow", [gaussian_image_flow, realnvp], ids=["gaussian", "realnvp"])
def test_importance_weighted_is_the_log_mean_of_its_draws_and_above_their_mean(make_flow) -> None:
    flow = make_flow()
    items = gaussian_items(16) if flow.event_shape == [1, 2, 2] else torch.from_numpy(tiny_images(16))
    draws = draws_by_hand(flow, items, samples=8, seed=5)
    estimate = importance_weighted_log_likelihoods(flow, items, samples=8, batch_size=len(items), seed=5)
    assert estimate.dtype == torch.float64 and estimate.shape == (16,)
    torch.testing.assert_close(estimate, torch.logsumexp(draws, dim=0) - math.log(8), rtol=0, atol=1e-9)
    # Jensen: log of a mean ≥ mean of logs, strictly when the draws differ (a plain mean of the draws fails here).
    spread = draws.max(0).values - draws.min(0).values
    assert (spread > 1e-3).all()
    assert (estimate - draws.mean(0) > 1e-6).all(), (estimate - draws.mean(0)).min()


def test_one_draw_is_one_seeded_uniform_dequantization() -> None:
    flow = realnvp()
    items = torch.from_numpy(tiny_images(10))
    noise = torch.rand(items.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        by_hand = flow.log_prob(items.float(), noise=noise).double()
    standard = held_out_log_likelihoods(flow, items, samples=1, batch_size=len(items), seed=3)
    torch.testing.assert_close(standard, by_hand, rtol=0, atol=0)
    # Not the bin centre (eval-mode log_prob): the noise is really used.
    assert not torch.allclose(standard, log_likelihoods(flow, items))
    # Deterministic for a seed, different for another.
    torch.testing.assert_close(held_out_log_likelihoods(flow, items, 1, len(items), seed=3), standard, rtol=0, atol=0)
    assert not torch.allclose(held_out_log_likelihoods(flow, items, 1, len(items), seed=4), standard)


def test_importance_weighted_tightens_towards_the_exact_discrete_log_probability() -> None:
    flow = gaussian_image_flow()
    items = gaussian_items(512)
    exact = exact_log_probability(items)
    # One seed for every k: the draws of a smaller k are the first draws of a larger one.
    estimates = {
        k: importance_weighted_log_likelihoods(flow, items, samples=k, batch_size=len(items), seed=0)
        for k in (1, 8, 64, 1024)
    }
    gaps = {k: float((exact - estimate).mean()) for k, estimate in estimates.items()}  # >= 0 in expectation
    errors = {k: float((exact - estimate).std()) / math.sqrt(len(items)) for k, estimate in estimates.items()}
    # k = 1 estimates E_u[log p(x + u)], known in closed form; its gap to log P(x) is the Jensen gap.
    expected = expected_one_draw(items)
    residual = estimates[1] - expected
    assert abs(float(residual.mean())) < 4 * float(residual.std()) / math.sqrt(len(items)), float(residual.mean())
    jensen_gap = float((exact - expected).mean())
    assert jensen_gap > 0.3, jensen_gap  # the test flow makes the k = 1 bound visibly loose
    # The bias falls like Var(w) / (2 k E[w]^2): a plain mean of the draws' log-likelihoods would stay at the
    # Jensen gap for every k.
    assert gaps[8] < gaps[1] / 4 and gaps[64] < gaps[1] / 10, gaps
    assert abs(gaps[1024]) < min(0.01, 4 * errors[1024]), (gaps, errors)


def test_held_out_is_exact_for_vectors_and_refuses_k_0() -> None:
    torch.manual_seed(0)
    flow = NVPNet(dim=2, hidden_dim=8, depth=2).eval()
    points = torch.randn(20, 2)
    with torch.no_grad():
        exact = flow.log_prob(points).double()
    torch.testing.assert_close(held_out_log_likelihoods(flow, points, samples=4), exact, rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected samples >= 1, got 0"):
        importance_weighted_log_likelihoods(realnvp(), torch.from_numpy(tiny_images(2)), samples=0)
