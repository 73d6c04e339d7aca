"""Seamless textures: wrap every convolution around the chosen axes of the image.

A texture tiles when the network never sees an edge: each padded Conv2d of the UNet and the VAE pads
circularly along the tiled axis (and with zeros along the other), so left/right or top/bottom are
neighbours. Applied for one generation, then undone, because the modules are shared and cached.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def _wrapping_conv(conv: torch.nn.Conv2d, wrap_x: bool, wrap_y: bool):
    pad_y, pad_x = conv.padding  # type: ignore[misc]

    def conv_forward(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        inputs = F.pad(inputs, (pad_x, pad_x, 0, 0), mode="circular" if wrap_x else "constant")
        inputs = F.pad(inputs, (0, 0, pad_y, pad_y), mode="circular" if wrap_y else "constant")
        return F.conv2d(inputs, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return conv_forward


@contextmanager
def seamless(modules: Iterable[torch.nn.Module], tiling: str) -> Iterator[None]:
    """Within the block, convolutions in ``modules`` wrap along x, y or both (``tiling``)."""
    wrap_x, wrap_y = "x" in tiling, "y" in tiling
    patched: list[torch.nn.Conv2d] = []
    if wrap_x or wrap_y:
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, torch.nn.Conv2d) and isinstance(layer.padding, tuple) and any(layer.padding):
                    layer._conv_forward = _wrapping_conv(layer, wrap_x, wrap_y)  # type: ignore[method-assign]
                    patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer._conv_forward
