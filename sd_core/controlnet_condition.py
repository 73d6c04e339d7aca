"""A ControlNet's conditioning image embedded once per generation, not once per denoising step.

Why: diffusers' ``ControlNetModel`` runs its conditioning embedding (eight convolutions of 16 to 256 channels
over the full-size control image) inside every step's forward, on the same image every step: 0.34 ms of
SD1.5's 9.5 ms step at 512² on an H100, 1.25 ms of SDXL's 48 ms at 1024²
(benchmarks/results/h100-2026-11-26-session4-steps.json). The image does not change within a generation, so
neither does its embedding.

How: on the graph path (sd_core/acceleration.py) a ControlNet called with a ``controlnet_cond`` image is given
the image's embedding instead, and runs with its embedding layer passing its input through. The embedding is
computed the first time the pipeline passes that image and reused while the very same, unmodified tensor
comes back; it is what the layer computes inside the forward (the same layer on the same input), so each
step's result is unchanged. Only for diffusers' ``ControlNetModel`` with RGB conditioning: a BGR one flips the
image before embedding it, and other ControlNet kinds embed differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import ControlNetModel


def embeds_once(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a ControlNet whose conditioning embedding can be computed outside its forward."""
    return type(module) is ControlNetModel and module.config.controlnet_conditioning_channel_order == "rgb"


class ConditionEmbeddings:
    """The embeddings of the conditioning images each ControlNet was given, kept for one generation."""

    # Images of one generation (one per control; one ControlNet may serve several controls): more means
    # something passes new tensors every step, and nothing is gained by keeping them.
    _MOST = 8

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], tuple[torch.Tensor, int, torch.Tensor]] = {}

    def of(self, controlnet: ControlNetModel, image: torch.Tensor) -> torch.Tensor:
        """``controlnet``'s embedding of ``image``: computed once, while the same tensor is passed unchanged."""
        key = (id(controlnet), id(image))
        seen = self._seen.get(key)
        if seen is not None and seen[0] is image and seen[1] == image._version:
            return seen[2]
        embedding = controlnet.controlnet_cond_embedding(image)
        if len(self._seen) >= self._MOST:
            self._seen.clear()
        # Holding the image keeps its memory, and so its id, from passing to another tensor.
        self._seen[key] = (image, image._version, embedding)
        return embedding


def forward_with_embedded_condition(
    controlnet: ControlNetModel, forward: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """``forward`` of ``controlnet`` given ``controlnet_cond`` already embedded (``ConditionEmbeddings.of``)."""
    layer = controlnet.controlnet_cond_embedding
    previous = layer.__dict__.get("forward")
    layer.forward = _pass_through  # type: ignore[method-assign]
    try:
        return forward(*args, **kwargs)
    finally:
        if previous is None:
            del layer.forward
        else:
            layer.forward = previous  # type: ignore[method-assign]


def _pass_through(embedding: torch.Tensor) -> torch.Tensor:
    return embedding
