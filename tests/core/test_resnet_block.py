"""ResNet blocks with SiLU and the time embedding folded into their GroupNorms (sd_core/resnet_block.py),
against diffusers' own forward: on PyTorch's arithmetic, and through the Triton kernels run by Triton's
interpreter on the CPU (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from sd_core import channel_bias
from sd_core import group_norm as group_norm_module
from sd_core.resnet_block import fused_forward, is_plain, use_fused_resnet_blocks
from sd_core.tiling import seamless

BLOCKS = {
    "unet, new width": dict(in_channels=64, out_channels=96, temb_channels=48, groups=32),  # conv_shortcut
    "unet, same width": dict(in_channels=128, out_channels=128, temb_channels=48, groups=32),
    "vae, no time embedding": dict(in_channels=128, out_channels=128, temb_channels=None, groups=32),
    # a VAE decoder's blocks: "group" time-embedding norm, no time embedding
    "vae decoder": dict(in_channels=128, out_channels=128, temb_channels=None, groups=32, time_embedding_norm="group"),
    "scaled output": dict(in_channels=64, out_channels=64, temb_channels=48, groups=16, output_scale_factor=2.0),
}


def block_and_inputs(settings: dict, seed: int = 0) -> tuple[ResnetBlock2D, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(seed)
    block = ResnetBlock2D(**settings).eval()
    with torch.no_grad():  # diffusers initialises norms to identity and biases to small values: make them matter
        for parameter in block.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    x = (torch.randn(2, settings["in_channels"], 9, 7) * 2 + 1).to(memory_format=torch.channels_last)
    temb = torch.randn(2, settings["temb_channels"]) if settings["temb_channels"] else None
    return block, x, temb


@pytest.mark.parametrize("name", list(BLOCKS))
def test_pytorch_arithmetic_matches_diffusers(name):
    block, x, temb = block_and_inputs(BLOCKS[name])
    with torch.no_grad():
        expected = block(x, temb)
        got = fused_forward(block, x, temb)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_triton_kernels_match_diffusers(name, monkeypatch):
    monkeypatch.setattr(group_norm_module._SWITCH, "usable", lambda tensor: True)  # run the kernels on the CPU
    ran = []
    kernel = group_norm_module.group_norm_channels_last
    monkeypatch.setattr(
        group_norm_module, "group_norm_channels_last", lambda *args: ran.append(args[-1]) or kernel(*args)
    )
    monkeypatch.setattr(channel_bias._SWITCH, "usable", lambda tensor: True)
    add = channel_bias._launch
    monkeypatch.setattr(channel_bias, "_launch", lambda *args: ran.append("add") or add(*args))
    block, x, temb = block_and_inputs(BLOCKS[name], seed=1)
    with torch.no_grad():
        expected = block(x, temb)
        got = fused_forward(block, x, temb)
    # both norms went through the kernels, with SiLU; without a shortcut convolution (and with channels enough
    # for the add's channel block), the residual add too
    adds = block.conv_shortcut is None and block.conv2.out_channels >= 128
    assert ran == [True, True] + (["add"] if adds else [])
    torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_seamless_padding_is_kept_without_conv1_bias():
    block, x, temb = block_and_inputs(BLOCKS["unet, same width"])
    with torch.no_grad(), seamless([block], "xy"):
        expected = block(x, temb)
        got = fused_forward(block, x, temb)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_only_plain_blocks_are_routed_and_weights_stay():
    plain, x, temb = block_and_inputs(BLOCKS["unet, new width"])
    downsampling = ResnetBlock2D(in_channels=64, out_channels=64, temb_channels=48, down=True).eval()
    scale_shift = ResnetBlock2D(in_channels=64, temb_channels=48, time_embedding_norm="scale_shift").eval()
    model = torch.nn.ModuleList([plain, downsampling, scale_shift])
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert [is_plain(block) for block in model] == [True, False, False]
    with torch.no_grad():
        expected = plain(x, temb)
        assert use_fused_resnet_blocks(model) == 1
        assert use_fused_resnet_blocks(model) == 0
        torch.testing.assert_close(plain(x, temb), expected, atol=2e-5, rtol=1e-5)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())


def test_a_time_embedding_without_projection_keeps_diffusers_forward():
    """diffusers adds it to a "default" block as it comes (a block the fused forward never sees in SD's networks)."""
    block, x, _ = block_and_inputs(BLOCKS["vae, no time embedding"])
    temb = torch.randn(2, 128, 1, 1)
    with torch.no_grad():
        assert torch.equal(fused_forward(block, x, temb), block(x, temb))
