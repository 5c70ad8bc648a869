"""Turn a trained flow into a TorchScript module for serving (see ``docs/artifact.md``).

Work is done once, never by changing the maths: the scripted module is ``torch.jit.freeze``-d so parameters
become constants and each batch norm (eval mode, running statistics) is folded into the convolution before it,
and convolution weights are stored channels-last, the layout oneDNN's CPU kernels run fastest (measured in
``bench/flows.py``).
"""

import copy
import warnings

import torch
from torch import nn

from models.flow import Flow

EXPORTED_METHODS = ["encode", "decode", "log_prob"]


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` with only its deprecation warning silenced (TorchScript still works in 2.13)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*TorchScript.*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        return torch.jit.script(module)


def to_torchscript(flow: Flow, freeze: bool = True) -> torch.jit.ScriptModule:
    """Export ``flow`` as a frozen TorchScript module with ``encode``, ``decode`` and ``log_prob``.

    The input flow is not modified. The result runs in float32 on CPU; ``torch.jit.load(map_location=...)``
    moves it.

    Args:
        flow: any :class:`Flow` of this library.
        freeze: apply ``torch.jit.freeze`` (constant-folds the frozen weights).
    """
    inference_flow = copy.deepcopy(flow).float().cpu().eval().to(memory_format=torch.channels_last)
    for p in inference_flow.parameters():
        p.requires_grad_(False)
    scripted = script(inference_flow)
    if freeze:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*deprecated", category=DeprecationWarning)
            scripted = torch.jit.freeze(scripted, preserved_attrs=EXPORTED_METHODS)
    return scripted
