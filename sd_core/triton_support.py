"""Where sd_core's Triton kernels may run, and how a kernel that cannot be built falls back, once, to PyTorch.

Triton ships with torch's Linux CUDA builds, not with Windows or macOS ones, and builds each kernel on first
use, which can fail where PyTorch itself runs (no C compiler for Triton's launcher, a GPU its compiler does
not know). Either way the cost is speed, never the image.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)
Output = TypeVar("Output")


def route_forward(
    module: torch.nn.Module,
    layer_type: type,
    forward: Callable[..., Any],
    applies: Callable[[Any], bool] = lambda layer: True,
) -> int:
    """Shadow ``forward`` of every ``layer_type`` inside ``module`` for which ``applies(layer)`` with
    ``forward(layer, ...)``; returns how many.

    Only where Triton is present; the forward is set on each instance, so the module tree, its weights and its
    state dict stay untouched, and a layer already routed is left as it is.
    """
    if not triton_available():
        return 0
    routed = 0
    for layer in module.modules():
        if isinstance(layer, layer_type) and "forward" not in layer.__dict__ and applies(layer):
            layer.forward = functools.partial(forward, layer)
            routed += 1
    return routed


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported at all."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class KernelSwitch:
    """One kernel family's fast path, switched off for the rest of the process at its first failure."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failed = False

    def usable(self, tensor: torch.Tensor) -> bool:
        """On a CUDA tensor that needs no gradient, with Triton present and no failure so far."""
        return (
            tensor.is_cuda
            and not (torch.is_grad_enabled() and tensor.requires_grad)
            and triton_available()
            and not self.failed
        )

    def run(self, fast: Callable[[], Output], plain: Callable[[], Output]) -> Output:
        if not self.failed:
            try:
                return fast()
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:
                log.warning("Triton %s unavailable, using PyTorch's: %s", self.name, error)
                self.failed = True
        return plain()
