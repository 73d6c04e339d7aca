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
sd_core/acceleration.py ``_reserve``), so the peak stays; above 1024² (``MOST_PLAIN_TOKENS``) the scores
would outgrow that block (32 GiB at 2048²), so larger sizes keep the memory-efficient kernel.
Anything else (half precision, where the efficient kernel is faster; the CPU) runs diffusers' forward unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


MOST_PLAIN_TOKENS = 128 * 128
"""The most latent pixels (a 1024² image's) whose fp32 scores (1 GiB, twice that with the softmax) the plain
backend may hold: beyond, the scores grow with the square of the size and the memory-efficient kernel runs."""


def tf32_attention_forward(attention: Attention, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``Attention.forward``; for fp32 on a CUDA GPU up to ``MOST_PLAIN_TOKENS``, with the plain SDPA backend
    and TF32 matrix products."""
    tokens = hidden_states.shape[-2] * hidden_states.shape[-1] if hidden_states.dim() == 4 else hidden_states.shape[1]
    if hidden_states.dtype != torch.float32 or not hidden_states.is_cuda or tokens > MOST_PLAIN_TOKENS:
        return Attention.forward(attention, hidden_states, *args, **kwargs)
    with _tf32_matrix_products(), sdpa_kernel([SDPBackend.MATH]):
        return Attention.forward(attention, hidden_states, *args, **kwargs)


@contextmanager
def _tf32_matrix_products() -> Iterator[None]:
    """TF32 for CUDA matrix products within the block (and the kernels a graph records in it), then as before.

    Through PyTorch's process-wide precision: the legacy setting, or the per-backend one where the process chose
    that API (PyTorch refuses to read the legacy one then).
    """
    try:
        before = torch.get_float32_matmul_precision()
    except RuntimeError:
        matmul = torch.backends.cuda.matmul
        chosen = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = chosen
        return
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
