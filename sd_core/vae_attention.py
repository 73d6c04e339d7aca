"""The fp32 VAE's attention as TF32 matrix products: the precision its convolutions already compute in.

Why: SDXL's VAE runs in fp32 (sd_core/vae_precision.py), and its one attention layer in the encoder and in the
decoder attends over every latent pixel: 16384 tokens of 512 channels at 1024². In fp32 PyTorch's SDPA picks
its memory-efficient kernel, which has no tensor-core path for fp32: 14.7 ms a call on an H100
(benchmarks/results/h100-2026-11-26-session5-steps.json). PyTorch already runs every fp32 convolution of that
VAE in TF32 (``torch.backends.cudnn.allow_tf32`` is on by default), stock diffusers' too, and SD1.5's VAE
computes its attention in fp16 with the same 10-bit mantissa. SDXL + ControlNet img2img at 1024² went from
778.6 to 756.5 ms a request, in the same GPU memory (14.73 and 14.70 GiB reserved; ...-session6-probe.json).

How: each attention inside a VAE encoder or decoder computes, where its weights are fp32 and on a CUDA GPU,
with SDPA's plain (matrix product) backend and TF32 products allowed for the call. Its scores take 2 GiB at
1024² for a moment, inside the block the graphs reserve for the decoder's full-size activations (3 GiB:
sd_core/acceleration.py ``_reserve``), so the peak stays.
Anything else (half precision, where the efficient kernel is faster; the CPU) runs diffusers' forward unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch.nn.attention import SDPBackend, sdpa_kernel

from sd_core.triton_support import routable_layers, shadow_forward


def use_tf32_attention_in_float32_vae(module: torch.nn.Module) -> int:
    """Route the attention layers of a VAE ``Encoder`` or ``Decoder`` through ``tf32_attention_forward``;
    returns how many (none for any other module)."""
    if not isinstance(module, (Encoder, Decoder)):
        return 0
    return shadow_forward(routable_layers(module, Attention), tf32_attention_forward)


def tf32_attention_forward(attention: Attention, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``Attention.forward``; for fp32 on a CUDA GPU with the plain SDPA backend and TF32 matrix products."""
    if hidden_states.dtype != torch.float32 or not hidden_states.is_cuda:
        return Attention.forward(attention, hidden_states, *args, **kwargs)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32, for this call (and the kernels a graph records in it)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            return Attention.forward(attention, hidden_states, *args, **kwargs)
    finally:
        torch.set_float32_matmul_precision(precision)
