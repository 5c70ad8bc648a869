"""Normalizing flows of the founding material: exact log-likelihood, exact sampling, TorchScript export.

Direction convention (everywhere): ``forward``/``encode`` map data → latent; ``inverse``/``decode`` map latent →
data.
"""

from models.base import CompositeTransform, Transform
from models.coupling import AffineCoupling
from models.flow import Flow, bits_per_dim, standard_normal_log_prob
from models.nvpnet import NVPNet
from models.piecewise import PiecewiseLinearFlow
from models.realnvp import RealNVP
from models.registry import FLOWS, FlowSpec

__all__ = [
    "FLOWS",
    "AffineCoupling",
    "CompositeTransform",
    "Flow",
    "FlowSpec",
    "NVPNet",
    "PiecewiseLinearFlow",
    "RealNVP",
    "Transform",
    "bits_per_dim",
    "standard_normal_log_prob",
]
