"""Paths and grids in latent space (pure tensor math, float64 for accuracy, float32 out)."""

from __future__ import annotations

import math

import torch


def linear_path(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """``(1 - t) start + t end`` for ``steps`` values of ``t`` in ``[0, 1]``; ``(D,)`` → ``(steps, D)``."""
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)[:, None]
    return ((1 - t) * start.double() + t * end.double()).float()


def slerp_path(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation from ``start`` to ``end`` (linear when they are (anti)parallel); ``(steps, D)``."""
    a, b = start.double(), end.double()
    cosine = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300)
    omega = torch.arccos(cosine.clamp(-1.0, 1.0))
    sin_omega = torch.sin(omega)
    if float(sin_omega) < 1e-6:
        return linear_path(start, end, steps)
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)[:, None]
    path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin_omega
    return path.float()


def manifold_grid(corners: torch.Tensor, steps: int) -> torch.Tensor:
    """Dinh et al. (2017) eq. 19 over four latents ``(4, D)``; returns the ``(steps, steps, D)`` grid.

    ``z(φ, φ′) = cos φ (cos φ′ z1 + sin φ′ z2) + sin φ (cos φ′ z3 + sin φ′ z4)`` with φ (rows) and φ′ (columns)
    evenly spaced over ``[0, π/2]``.
    """
    z1, z2, z3, z4 = corners.double()
    angles = torch.linspace(0.0, math.pi / 2, steps, dtype=torch.float64)
    cos_row, sin_row = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    cos_col, sin_col = torch.cos(angles)[None, :, None], torch.sin(angles)[None, :, None]
    grid = cos_row * (cos_col * z1 + sin_col * z2) + sin_row * (cos_col * z3 + sin_col * z4)
    return grid.float()
