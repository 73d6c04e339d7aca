"""Step previews without the VAE: a fixed linear map from the 4 latent channels to RGB.

Decoding with the VAE every step costs as much as a UNet call; this costs a tiny matrix product on
the device and an (H/8, W/8) transfer. The factors are the widely used "latent RGB" approximations
for the SD1.x/SD2.x and SDXL latent spaces.

On a GPU even that transfer must not be waited for each step: a blocking copy drains the GPU's queue,
so the next step cannot be queued ahead and the GPU idles while the host catches up. ``PreviewRelay``
copies each step's preview into pinned host memory without blocking and hands over the previous one,
whose copy has finished by then (or finishes while the GPU already works on the current step).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

_SD1_FACTORS = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SD1_BIAS = (0.0, 0.0, 0.0)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


@functools.cache
def _latent_to_rgb(family: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The map's factors and bias on ``device``, made once per process: building them from Python lists is
    a host-to-device copy from pageable memory, which waits for all queued GPU work."""
    factors, bias = (_SDXL_FACTORS, _SDXL_BIAS) if family == "sdxl" else (_SD1_FACTORS, _SD1_BIAS)
    return torch.tensor(factors, device=device), torch.tensor(bias, device=device)


class PreviewRelay:
    """Turns each step's latents into a preview; on a GPU without making the host wait for that step.

    ``deferred=False`` (CPU, MPS) returns each step's own preview. ``deferred=True`` (CUDA) returns the
    previous step's, None at the first step: one preview per step, one step behind, and no step waits.
    """

    def __init__(self, family: str, deferred: bool) -> None:
        self.family = family
        self.deferred = deferred
        self._pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None

    def handover(self, latents: torch.Tensor) -> np.ndarray | None:
        """Start this step's preview; return the preview that is ready to show now."""
        rgb = self._to_rgb(latents)
        if not self.deferred:
            return rgb.cpu().numpy()
        # A fresh pinned tensor per step (torch caches pinned blocks): the array handed out keeps its own memory.
        on_gpu = rgb.is_cuda
        host = torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=on_gpu)
        host.copy_(rgb, non_blocking=on_gpu)
        copied = torch.cuda.Event() if on_gpu else None
        if copied is not None:
            copied.record()
        previous, self._pending = self._pending, (host, copied)
        if previous is None:
            return None
        previous_host, previous_copied = previous
        if previous_copied is not None:
            previous_copied.synchronize()
        return previous_host.numpy()

    def _to_rgb(self, latents: torch.Tensor) -> torch.Tensor:
        weight, offset = _latent_to_rgb(self.family, latents.device)
        rgb = torch.einsum("chw,cr->hwr", latents[0, :4].float(), weight) + offset
        return (rgb.clamp(-1.0, 1.0) + 1.0) * 0.5
