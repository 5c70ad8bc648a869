"""The one list of flows: name → class, the data it models, and the constructor keywords a config sets.

Training builds flows from it (``training.checkpoint.build_flow``), export checks a flow's type against it, and
the parametrized test suite runs over every entry's ``examples``. Adding a flow means adding one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.flow import Flow
from models.nvpnet import NVPNet
from models.piecewise import PiecewiseLinearFlow
from models.realnvp import RealNVP


@dataclass(frozen=True)
class FlowSpec:
    """How to build one flow type.

    Attributes:
        cls: the flow class.
        data_kind: ``image`` or ``vector``.
        options: constructor keywords read from the model configuration.
        accepts: the item shapes it models, in words (error messages).
        fits: whether it models items of a given shape.
        shape_args: constructor keywords given by the item shape.
        examples: small configurations (name → all constructor keywords) for the test suite.
    """

    cls: type[Flow]
    data_kind: str
    options: tuple[str, ...]
    accepts: str
    fits: Callable[[tuple[int, ...]], bool]
    shape_args: Callable[[tuple[int, ...]], dict[str, Any]]
    examples: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def build(self, shape: tuple[int, ...], options: Mapping[str, Any]) -> Flow:
        """The flow for items of ``shape`` with the configured ``options`` (extra keys are ignored).

        Raises:
            ValueError: the shape does not fit, or the constructor refuses the values.
        """
        if not self.fits(shape):
            raise ValueError(f"{self.cls.__name__} needs {self.accepts}, got items of shape {list(shape)}")
        return self.cls(**self.shape_args(shape), **{key: options[key] for key in self.options})


FLOWS: dict[str, FlowSpec] = {
    "RealNVP": FlowSpec(
        cls=RealNVP,
        data_kind="image",
        options=("num_scales", "mid_channels", "num_blocks"),
        accepts="square images (C, S, S)",
        fits=lambda shape: len(shape) == 3 and shape[1] == shape[2],
        shape_args=lambda shape: {"in_channels": shape[0], "image_size": shape[1]},
        examples={
            "1x4x4": {"in_channels": 1, "image_size": 4, "num_scales": 2, "mid_channels": 4, "num_blocks": 1},
            "1x8x8": {"in_channels": 1, "image_size": 8, "num_scales": 3, "mid_channels": 4, "num_blocks": 1},
            "3x4x4": {"in_channels": 3, "image_size": 4, "num_scales": 2, "mid_channels": 4, "num_blocks": 2},
        },
    ),
    "NVPNet": FlowSpec(
        cls=NVPNet,
        data_kind="vector",
        options=("hidden_dim", "depth"),
        accepts="vector data (D,)",
        fits=lambda shape: len(shape) == 1,
        shape_args=lambda shape: {"dim": shape[0]},
        examples={"2d": {"dim": 2, "hidden_dim": 16, "depth": 4}, "5d": {"dim": 5, "hidden_dim": 8, "depth": 2}},
    ),
    "PiecewiseLinearFlow": FlowSpec(
        cls=PiecewiseLinearFlow,
        data_kind="vector",
        options=("num_bins", "xmin", "xmax"),
        accepts="1-D data",
        fits=lambda shape: tuple(shape) == (1,),
        shape_args=lambda shape: {},
        examples={"8bins": {"num_bins": 8, "xmin": -3.0, "xmax": 3.0}},
    ),
}


def example_flows() -> dict[str, Callable[[], Flow]]:
    """Every example of every flow type, as ``"Type-example"`` → a constructor (fresh weights per call)."""
    return {
        f"{name}-{example}": (lambda spec=spec, kwargs=kwargs: spec.cls(**kwargs))
        for name, spec in FLOWS.items()
        for example, kwargs in spec.examples.items()
    }
