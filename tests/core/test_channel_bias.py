"""Convolution biases added in one pass over channels-last activations (sd_core/channel_bias.py), through
Triton's interpreter on the CPU (tests/conftest.py), against the convolution's own output."""

from __future__ import annotations

import pytest
import torch

from sd_core import channel_bias
from sd_core.channel_bias import use_fused_convolution_biases
from sd_core.tiling import seamless


def convolutions() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(8, 160, 3, padding=1),  # routed (160: a channel block and a part)
        torch.nn.Conv2d(160, 128, 3, padding=1, stride=2),  # a downsampler: routed
        torch.nn.Conv2d(128, 6, 1),  # pointwise: a matrix product elsewhere (channels_last.py)
        torch.nn.Conv2d(6, 6, 3, padding=1, bias=False),  # nothing to add
        torch.nn.Conv2d(6, 4, 3, padding=1),  # too narrow for the kernel's channel block: PyTorch's add
    ).eval()


def test_spatial_convolutions_with_a_bias_are_routed_and_compute_the_same(monkeypatch):
    monkeypatch.setattr(channel_bias._SWITCH, "usable", lambda tensor: True)
    launches: list[int] = []
    launch = channel_bias._launch
    monkeypatch.setattr(channel_bias, "_launch", lambda *args: launches.append(1) or launch(*args))
    model = convolutions()
    x = torch.randn(2, 8, 9, 7).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
        assert use_fused_convolution_biases(model) == 2
        assert use_fused_convolution_biases(model) == 0
        got = model(x)
        assert len(launches) == 2
        with seamless([model], "xy"):  # seamless textures still wrap the routed convolutions
            wrapped = model[0](x)
        circular = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")
        wrapped_expected = torch.nn.functional.conv2d(circular, model[0].weight, model[0].bias)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wrapped, wrapped_expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_nchw_activations_take_pytorch_s_own_bias_add(monkeypatch):
    monkeypatch.setattr(channel_bias._SWITCH, "usable", lambda tensor: True)
    monkeypatch.setattr(channel_bias, "_launch", lambda *args: pytest.fail("the kernel ran on NCHW"))
    model = convolutions()
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        expected = model(x)
        use_fused_convolution_biases(model)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
