"""Explanation maps: the gradient of the log-likelihood through a module, and its 8-bit saliency maps."""

from __future__ import annotations

import pytest
import torch

from service.scoring import explain


def test_gradient_and_saliency_maps() -> None:
    weights = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)

    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1), (weights * x).flatten(1).sum(1)

    def log_likelihood(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
        return log_det.double()

    with torch.inference_mode():  # the executor thread runs under inference mode; gradients must still flow
        x = torch.rand(2, 1, 4, 4)
        gradient = explain.log_likelihood_gradient(encode, log_likelihood, x)
    torch.testing.assert_close(gradient, weights.expand(2, 1, 4, 4))
    maps, scale = explain.saliency_maps(gradient)
    assert maps.dtype == torch.uint8 and maps.shape == (2, 1, 4, 4)
    assert maps.max() == 255 and scale.tolist() == pytest.approx([1.0, 1.0])
    assert maps[0, 0, 0, 0] == 255 and maps[0, 0, 0, 1] == round(255 * (1 - 2 / 15))
