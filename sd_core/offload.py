"""Low-VRAM: run models that do not fit the GPU by keeping their weights in host memory.

SD1.x/SD2.x: diffusers' model offload (each whole network moves to the GPU when it is called) fits a
4 GiB budget with a ControlNet and is the faster choice there (H100 capped at 4 GiB, SD1.5 + ControlNet
img2img 512²: 3.8 GiB reserved, 156 ms a step; streaming layer by layer: 2.2 GiB, 182 ms a step).
SDXL: the UNet and a ControlNet alone are 7.6 GB in fp16, so whole-model offload cannot fit 8 GiB
(it ran out of memory under that cap). Instead each layer's weights are copied to the GPU just before
it runs, the next layer's copy overlapping the current layer's work on a side stream. The VAE
(320 MB in fp32: sd_core/vae_precision.py) stays whole on the GPU: called twice a request, it gains nothing from hooks.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

# Modules are shared by every pipeline built over them (``from_pipe``), so their hooks are installed once.
_PLACED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def enable_offload(pipe: Any, device: torch.device, family: str) -> None:
    """Keep ``pipe``'s weights in host memory, moving them to ``device`` only as they are needed."""
    if family != "sdxl" or device.type != "cuda":
        pipe.enable_model_cpu_offload(device=device)
        return
    from diffusers.hooks import apply_group_offloading

    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module) or component in _PLACED:
            continue
        if name == "vae":
            component.to(device)
        else:
            apply_group_offloading(component, onload_device=device, offload_type="leaf_level", use_stream=True)
        _PLACED.add(component)


def rest_offloaded_weights(module: torch.nn.Module) -> None:
    """Put every layer of ``module`` that layer-by-layer offloading left on the GPU (a forward that failed midway)
    back at rest in host memory.

    Why: that offloading loads each layer from its own host copy and, at rest, the layer's weight *is* that copy.
    A weight changed in place while still on the GPU (a LoRA merged) would be replaced by the unchanged copy at the
    next load; at rest, the change lands in the copy itself.
    """
    for layer in module.modules():
        registry = getattr(layer, "_diffusers_hook", None)
        hook = registry.get_hook("group_offloading") if registry is not None else None
        if hook is not None:
            hook.group.offload_()
