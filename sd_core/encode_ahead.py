"""An img2img request's picture encoded before the pipeline starts, exactly as the pipeline would encode it.

Why: a diffusers pipeline spends its first milliseconds on the host (checks, prompt and image preparation,
the scheduler's timesteps) and only then queues the VAE encode; the GPU idles meanwhile. Queued first, the
encode overlaps that host work until the scheduler's first copy of its timesteps to the GPU, which waits for
the queue to drain. On an H100, SD1.5 + ControlNet img2img at 512² took 144.7-145.4 ms a request with it and
146.3 ms without (benchmarks/results/h100-2026-11-26-session6-probe.json).

How: the first half of the img2img pipelines' ``prepare_latents`` (preprocess, encode, draw the latent sample
from the request's generator, scale), with diffusers' own functions on the same inputs, so the result and
the generator's state after it are the same. The pipelines take 4-channel images as latents and skip their
own encode; the noise they then draw comes next from the same generator, as it would have.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

from sd_core.vae_precision import recasts_vae


@torch.no_grad()  # as inside the pipeline's call: no autograd records, and the graph path applies
def encode_ahead(
    pipe: Any, image: Any, generator: torch.Generator, dtype: torch.dtype, sdxl: bool, width: int, height: int
) -> torch.Tensor:
    """The scaled latents of ``image`` that ``pipe``'s ``prepare_latents`` would compute for one image, in
    ``dtype`` (the prompt embeddings', which the pipelines use), advancing ``generator`` the same way."""
    processed = pipe.image_processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
    pixels = processed.to(device=pipe._execution_device, dtype=dtype)
    if sdxl and recasts_vae(pipe):  # SDXL's fp32 VAE where sd_core has not made it so for good (fp32 pipelines)
        pixels = pixels.float()
    latents = retrieve_latents(pipe.vae.encode(pixels), generator=generator)
    config = pipe.vae.config
    if not sdxl:
        return config.scaling_factor * latents
    latents = latents.to(dtype)
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(device=latents.device, dtype=dtype)
        std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(device=latents.device, dtype=dtype)
        return (latents - mean) * config.scaling_factor / std
    return config.scaling_factor * latents
