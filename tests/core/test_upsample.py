"""Nearest-neighbour 2x upsampling in Triton (sd_core/upsample.py), run by Triton's interpreter on the CPU
(tests/conftest.py), against PyTorch's interpolate and diffusers' ``Upsample2D``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D

from sd_core import upsample as upsample_module
from sd_core.upsample import is_plain, upsample_nearest_2x, use_triton_upsampling


@pytest.fixture
def kernel_on_cpu(monkeypatch) -> list[tuple[int, ...]]:
    """Run the kernel through Triton's interpreter; the list records the shape of each launch's input."""
    monkeypatch.setattr(upsample_module._SWITCH, "usable", lambda tensor: True)
    launches: list[tuple[int, ...]] = []
    kernel = upsample_module.upsample_nearest_2x
    monkeypatch.setattr(upsample_module, "upsample_nearest_2x", lambda x: launches.append(x.shape) or kernel(x))
    return launches


def channels_last(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "shape",
    [
        (2, 320, 8, 8),  # more channels than a block, not a multiple of it
        (1, 96, 5, 7),  # fewer channels than a block, odd sides
        (3, 4, 1, 33),  # one input row: pixels past a tile's end
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_pytorch_interpolate(shape, dtype):
    x = channels_last(shape).to(dtype)
    got = upsample_nearest_2x(x)
    assert torch.equal(got, F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == dtype


@pytest.mark.parametrize("use_conv", [True, False])
def test_routed_upsampler_matches_diffusers(use_conv, kernel_on_cpu):
    torch.manual_seed(0)
    layer = Upsample2D(64, use_conv=use_conv).eval()
    x = channels_last((2, 64, 6, 5))
    with torch.no_grad():
        expected = layer(x)
        assert use_triton_upsampling(torch.nn.Sequential(layer)) == 1
        got = layer(x)
        also = layer(x, (12, 10))  # the UNet may name the doubled size
    assert kernel_on_cpu == [x.shape, x.shape]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(also, expected, atol=1e-5, rtol=1e-5)


def test_other_sizes_layouts_and_upsamplers_keep_diffusers_forward(kernel_on_cpu):
    torch.manual_seed(0)
    plain = Upsample2D(16, use_conv=True).eval()
    assert use_triton_upsampling(torch.nn.Sequential(plain)) == 1
    x = channels_last((1, 16, 5, 5))
    with torch.no_grad():
        odd = plain(x, (11, 9))  # not twice the input (a UNet given an odd latent size)
        nchw = plain(x.contiguous())
    assert kernel_on_cpu == []
    assert odd.shape[-2:] == (11, 9) and nchw.shape[-2:] == (10, 10)
    transposed = Upsample2D(16, use_conv_transpose=True)
    assert [is_plain(layer) for layer in (plain, transposed)] == [True, False]
