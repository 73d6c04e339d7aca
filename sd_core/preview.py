"""Step previews without the VAE: a fixed linear map from the 4 latent channels to RGB.

Decoding with the VAE every step costs as much as a UNet call; this costs a tiny matrix product on
the device and an (H/8, W/8) transfer. The factors are the widely used "latent RGB" approximations
for the SD1.x/SD2.x and SDXL latent spaces.
"""

from __future__ import annotations

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


def latents_to_preview(latents: torch.Tensor, family: str) -> np.ndarray:
    """(B, 4, h, w) latents -> (h, w, 3) float32 RGB in [0,1] of the first image in the batch."""
    factors, bias = (_SDXL_FACTORS, _SDXL_BIAS) if family == "sdxl" else (_SD1_FACTORS, _SD1_BIAS)
    first = latents[0, :4].float()
    weight = torch.tensor(factors, device=first.device)
    rgb = torch.einsum("chw,cr->hwr", first, weight) + torch.tensor(bias, device=first.device)
    return ((rgb.clamp(-1.0, 1.0) + 1.0) * 0.5).cpu().numpy()
