"""Where sd_core's Triton kernels may run, and how a kernel that cannot be built falls back, once, to PyTorch;
with the routing of layers' forwards that every fast path uses, and the kernels' launch geometry.

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
    ``forward(layer, ...)``, where Triton is present; returns how many (``shadow_forward``)."""
    if not triton_available():
        return 0
    return shadow_forward(routable_layers(module, layer_type, applies), forward)


def routable_layers(
    module: torch.nn.Module, layer_type: type, applies: Callable[[Any], bool] = lambda layer: True
) -> list[Any]:
    """The ``layer_type`` layers inside ``module`` for which ``applies(layer)``, not routed yet."""
    return [
        layer
        for layer in module.modules()
        if isinstance(layer, layer_type) and "forward" not in layer.__dict__ and applies(layer)
    ]


def shadow_forward(layers: list[Any], forward: Callable[..., Any]) -> int:
    """Make each layer's forward ``forward(layer, ...)``; returns how many.

    The forward is set on each instance, so the module tree, its weights and its state dict stay untouched.
    """
    for layer in layers:
        layer.forward = functools.partial(forward, layer)
    return len(layers)


def next_power_of_two(value: int) -> int:
    """The block a kernel spans ``value`` elements with (Triton's blocks are powers of two)."""
    return 1 << (value - 1).bit_length()


def rows_per_tile(tile: int, row_block: int) -> int:
    """Rows of a tile of about ``tile`` elements, each row ``row_block`` wide: a power of two, at least one."""
    return 1 << (max(1, tile // row_block).bit_length() - 1)


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

    def takes_image(self, tensor: torch.Tensor) -> bool:
        """``usable`` for a channels-last (N, C, H, W) image in a float type the kernels compute."""
        return (
            tensor.dim() == 4
            and tensor.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and tensor.is_contiguous(memory_format=torch.channels_last)
            and self.usable(tensor)
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
