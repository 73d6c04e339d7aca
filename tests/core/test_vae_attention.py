"""The fp32 VAE's attention in TF32 (sd_core/vae_attention.py): routed only inside VAE encoders and decoders,
the same result as diffusers' forward, and the process's matmul precision left as it was."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention

from sd_core import vae_attention
from sd_core.vae_attention import tf32_attention_forward, use_tf32_attention_in_float32_vae


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
    ).eval()  # fmt: skip


def test_only_a_vaes_encoder_and_decoder_attentions_are_routed():
    vae = tiny_vae()
    assert use_tf32_attention_in_float32_vae(vae.encoder) == 1
    assert use_tf32_attention_in_float32_vae(vae.decoder) == 1
    assert use_tf32_attention_in_float32_vae(vae.decoder) == 0  # routed once
    assert use_tf32_attention_in_float32_vae(torch.nn.Sequential(Attention(32))) == 0  # a UNet's are not


def test_same_result_and_precision_restored(monkeypatch):
    """On the CPU diffusers' forward runs as it is; on a CUDA GPU the call switches backend and precision only
    for itself (seen here by pretending the input lies on one), and only up to a 1024² image's latent size."""
    vae = tiny_vae()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = vae.decode(vae.encode(x).latent_dist.mean).sample
        use_tf32_attention_in_float32_vae(vae.encoder)
        use_tf32_attention_in_float32_vae(vae.decoder)
        got = vae.decode(vae.encode(x).latent_dist.mean).sample
    assert torch.equal(got, expected)
    seen = []
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda tensor: True))
    monkeypatch.setattr(
        vae_attention.Attention, "forward", lambda *args, **kwargs: seen.append(torch.get_float32_matmul_precision())
    )
    attention = vae.decoder.mid_block.attentions[0]
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # full fp32 products, PyTorch's default
    try:
        tf32_attention_forward(attention, torch.randn(1, 16, 8, 8))
        tf32_attention_forward(attention, torch.randn(1, 16, 8, 8).half())
        tf32_attention_forward(attention, torch.empty(1, 16, 129, 128))  # past 1024²: scores would outgrow memory
        assert seen == ["high", "highest", "highest"]
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_process_on_pytorchs_per_backend_precision_api_keeps_it(monkeypatch):
    """Once a process sets ``torch.backends.cuda.matmul.fp32_precision``, PyTorch refuses the legacy getter:
    the call then switches and restores the per-backend setting instead of failing the generation."""
    matmul = torch.backends.cuda.matmul
    seen = []
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda tensor: True))
    monkeypatch.setattr(vae_attention.Attention, "forward", lambda *args, **kwargs: seen.append(matmul.fp32_precision))
    original = matmul.fp32_precision
    matmul.fp32_precision = "ieee"

    def refused() -> str:
        raise RuntimeError("mix of the legacy and new APIs")  # what PyTorch says once the settings disagree

    monkeypatch.setattr(torch, "get_float32_matmul_precision", refused)
    try:
        tf32_attention_forward(tiny_vae().decoder.mid_block.attentions[0], torch.randn(1, 16, 8, 8))
        assert seen == ["tf32"] and matmul.fp32_precision == "ieee"
    finally:
        matmul.fp32_precision = original
