"""Noise uploads that do not wait for the GPU (sd_core/noise.py): the same numbers as diffusers' own."""

from __future__ import annotations

import sys

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionImg2ImgPipeline
from diffusers.utils import torch_utils

from sd_core import noise


@pytest.mark.parametrize(
    "generator",
    [
        lambda: torch.Generator().manual_seed(7),
        lambda: [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)],
        lambda: None,
    ],
)
def test_same_numbers_as_diffusers_off_the_gpu(generator):
    ours = noise.randn_tensor((2, 4, 3, 3), generator=generator(), device="cpu", dtype=torch.float32)
    theirs = torch_utils.randn_tensor((2, 4, 3, 3), generator=generator(), device="cpu", dtype=torch.float32)
    if generator() is not None:
        assert torch.equal(ours, theirs)
    assert ours.shape == (2, 4, 3, 3)


def test_cpu_noise_for_a_gpu_is_drawn_on_the_cpu_then_uploaded_without_blocking(monkeypatch):
    """The CUDA branch, seen from the CPU: what is drawn, and how it is copied."""
    copies = []

    class Drawn(torch.Tensor):
        def pin_memory(self):
            copies.append("pinned")
            return self

        def to(self, *args, **kwargs):
            copies.append((args, kwargs))
            return torch.Tensor(self)

    def draw(shape, generator=None, device=None, dtype=None, layout=None):
        assert device == torch.device("cpu")
        return torch_utils.randn_tensor(shape, generator=generator, device=device, dtype=dtype).as_subclass(Drawn)

    monkeypatch.setattr(noise, "_DIFFUSERS_RANDN", draw)
    got = noise.randn_tensor((1, 4, 2, 2), generator=torch.Generator().manual_seed(3), device="cuda:0")
    expected = torch_utils.randn_tensor((1, 4, 2, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, expected)
    assert copies == ["pinned", ((torch.device("cuda:0"),), {"non_blocking": True})]


def test_the_modules_that_draw_noise_use_it_once_installed(monkeypatch):
    pipeline_module = sys.modules[StableDiffusionImg2ImgPipeline.__module__]
    scheduler_module = sys.modules[EulerAncestralDiscreteScheduler.__module__]
    vae_module = sys.modules[noise.DiagonalGaussianDistribution.__module__]
    for module in (pipeline_module, scheduler_module, vae_module):  # restored after the test
        monkeypatch.setattr(module, "randn_tensor", torch_utils.randn_tensor)
    pipeline = object.__new__(StableDiffusionImg2ImgPipeline)
    scheduler = EulerAncestralDiscreteScheduler()
    assert noise.draw_noise_without_waiting(pipeline, scheduler) == 3
    assert noise.draw_noise_without_waiting(pipeline, scheduler) == 0
    assert pipeline_module.randn_tensor is scheduler_module.randn_tensor is vae_module.randn_tensor
    assert pipeline_module.randn_tensor is noise.randn_tensor
