"""Latent-space geometry: linear and spherical paths, the paper's manifold grid (eq. 19)."""

from __future__ import annotations

import math

import torch

from service.engine.interpolation import linear_path, manifold_grid, slerp_path


def test_linear_and_slerp_paths() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    line = linear_path(a, b, 5)
    assert torch.allclose(line[0], a) and torch.allclose(line[-1], b) and torch.allclose(line[2], (a + b) / 2)
    arc = slerp_path(a, b, 3)
    assert torch.allclose(arc[0], a) and torch.allclose(arc[-1], b, atol=1e-6)
    assert torch.allclose(arc[1], torch.tensor([math.cos(math.pi / 4), 2 * math.sin(math.pi / 4)]), atol=1e-6)
    parallel = slerp_path(a, 3 * a, 3)
    assert torch.allclose(parallel[1], 2 * a)  # falls back to linear


def test_manifold_grid_follows_eq_19() -> None:
    corners = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    steps = 5
    grid = manifold_grid(corners, steps)
    assert grid.shape == (steps, steps, 6)
    for (row, column), index in zip([(0, 0), (0, -1), (-1, 0), (-1, -1)], range(4), strict=True):
        assert torch.allclose(grid[row, column], corners[index], atol=1e-6)
    phi, phi_prime = math.pi / 2 * 1 / 4, math.pi / 2 * 3 / 4  # row 1, column 3
    z1, z2, z3, z4 = corners
    expected = math.cos(phi) * (math.cos(phi_prime) * z1 + math.sin(phi_prime) * z2) + math.sin(phi) * (
        math.cos(phi_prime) * z3 + math.sin(phi_prime) * z4
    )
    assert torch.allclose(grid[1, 3], expected, atol=1e-6)
