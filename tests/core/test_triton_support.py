"""Which tensors a kernel family's fast path takes (sd_core/triton_support.py ``KernelSwitch``)."""

from __future__ import annotations

import pytest
import torch

from sd_core import triton_support
from sd_core.triton_support import KernelSwitch


@pytest.fixture
def on_gpu_with_triton(monkeypatch):
    """As on a CUDA GPU with Triton present, so that only the tensor's own properties decide."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda tensor: True))
    monkeypatch.setattr(triton_support, "triton_available", lambda: True)


def test_images_are_channels_last_four_dimensional_floats(on_gpu_with_triton):
    switch = KernelSwitch("test")
    image = torch.zeros(2, 8, 4, 4).to(memory_format=torch.channels_last)
    assert switch.takes_image(image)
    assert switch.takes_image(image.half()) and switch.takes_image(image.bfloat16())
    assert not switch.takes_image(torch.zeros(2, 8, 4, 4))  # channels first
    assert not switch.takes_image(image.double())  # no kernel computes fp64
    assert not switch.takes_image(torch.zeros(8, 16))
    assert not switch.takes_image(image.requires_grad_())  # autograd needs PyTorch's own


def test_a_failed_family_takes_nothing_more(on_gpu_with_triton):
    switch = KernelSwitch("test")
    image = torch.zeros(1, 8, 2, 2).to(memory_format=torch.channels_last)
    assert switch.run(lambda: 1 / 0, lambda: "plain") == "plain"
    assert not switch.takes_image(image)
