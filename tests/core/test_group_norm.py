"""The channels-last GroupNorm kernels, run by Triton's interpreter on the CPU (tests/conftest.py sets it up),
against PyTorch's group_norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sd_core import group_norm as group_norm_module
from sd_core.group_norm import group_norm, group_norm_channels_last, use_triton_group_norm
from sd_core.triton_support import KernelSwitch, triton_available


@pytest.fixture(params=["three kernels", "each group whole"])
def kernel_path(request, monkeypatch) -> str:
    """Run a test both ways the kernels normalise: statistics, merge and normalise in three kernels (large
    activations), and each group whole in one program (small ones)."""
    monkeypatch.setattr(group_norm_module, "SMALL_GROUP", 0 if request.param == "three kernels" else 10**9)
    return request.param


def test_triton_ships_with_the_pinned_torch():
    assert triton_available()


def channels_last(shape: tuple[int, ...], offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 3 + offset).to(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((2, 320, 8, 8), 32),  # SD's 10 channels a group: not a power of two
        ((1, 1280, 2, 2), 32),  # a UNet's deepest level: one tile row at a time
        ((1, 12, 7, 9), 3),  # odd pixel count, 3 groups
        ((1, 128, 40, 40), 32),  # more pixels than chunks x tile rows: several tiles a chunk
        ((3, 64, 5, 3), 32),  # batch of three, 2 channels a group
    ],
)
@pytest.mark.usefixtures("kernel_path")
def test_matches_pytorch_group_norm(shape, groups):
    x = channels_last(shape)
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(shape[1], generator=generator), torch.randn(shape[1], generator=generator)
    got = group_norm_channels_last(x, groups, weight, bias, 1e-5)
    torch.testing.assert_close(got, F.group_norm(x.contiguous(), groups, weight, bias, 1e-5), atol=5e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shifted", ["none", "channel", "image", "both"])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.usefixtures("kernel_path")
def test_input_shifts_and_silu_match_adding_then_activating(shifted, silu, monkeypatch):
    """What a ResNet block folds into its second GroupNorm: conv1's bias and the time embedding, then SiLU."""
    monkeypatch.setattr(group_norm_module, "NORMALISE_TILE", 512)  # several normalising programs an image
    x = channels_last((2, 320, 8, 8), offset=1.5)
    generator = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(320, generator=generator), torch.randn(320, generator=generator)
    channel_shift = torch.randn(320, generator=generator) * 4 if shifted in ("channel", "both") else None
    image_shift = torch.randn(2, 320, generator=generator) * 4 if shifted in ("image", "both") else None
    shifts = (channel_shift, image_shift)
    got = group_norm_channels_last(x, 32, weight, bias, 1e-5, shifts=shifts, silu=silu)
    expected = group_norm(x.contiguous(), 32, weight, bias, 1e-5, shifts=shifts, silu=silu)  # CPU: PyTorch's
    torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5)
    total = sum((shift.reshape(-1, 320, 1, 1) for shift in shifts if shift is not None), torch.zeros(1, 320, 1, 1))
    reference = F.group_norm(x + total, 32, weight, bias, 1e-5)
    torch.testing.assert_close(expected, F.silu(reference) if silu else reference)


@pytest.mark.usefixtures("kernel_path")
def test_image_shift_rows_may_lie_apart():
    """The time projections of all ResNet blocks come as columns of one product (sd_core/time_projection.py)."""
    x = channels_last((2, 64, 6, 6), offset=0.5)
    generator = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(64, generator=generator), torch.randn(64, generator=generator)
    wide = torch.randn(2, 200, generator=generator) * 3
    shift = wide[:, 100:164]
    got = group_norm_channels_last(x, 16, weight, bias, 1e-5, shifts=(None, shift), silu=True)
    expected = F.silu(F.group_norm(x + shift[:, :, None, None], 16, weight, bias, 1e-5))
    torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5)


def test_chunks_of_several_tiles_merge_to_the_same_statistics(monkeypatch):
    """Large images (a VAE's) give each statistics program several tiles: merged tile by tile, then chunk by chunk."""
    monkeypatch.setattr(group_norm_module, "SMALL_GROUP", 0)  # the three-kernel path, whatever the size
    monkeypatch.setattr(group_norm_module, "TILE", 256)
    monkeypatch.setattr(group_norm_module, "MAX_CHUNKS", 3)
    x = channels_last((2, 64, 9, 11), offset=5.0)
    weight, bias = torch.randn(64), torch.randn(64)
    got = group_norm_channels_last(x, 32, weight, bias, 1e-5)
    torch.testing.assert_close(got, F.group_norm(x.contiguous(), 32, weight, bias, 1e-5), atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize(("merge_elements", "chunks"), [(4, 1), (16, 4), (10**6, 60)])
def test_chunks_are_as_many_as_a_merge_holds(merge_elements, chunks, monkeypatch):
    """Many chunks fill the GPU for one image; a group's merge bounds them (here 4 channels a group)."""
    monkeypatch.setattr(group_norm_module, "SMALL_GROUP", 0)
    monkeypatch.setattr(group_norm_module, "TILE", 256)  # 2 pixel rows of 128 channels a tile: 60 tiles
    monkeypatch.setattr(group_norm_module, "MAX_CHUNKS", 512)
    monkeypatch.setattr(group_norm_module, "MERGE_ELEMENTS", merge_elements)
    assert group_norm_module.statistics_chunks(120, 2, 4)[1] == chunks
    x = channels_last((1, 128, 12, 10), offset=-3.0)
    weight, bias = torch.randn(128), torch.randn(128)
    got = group_norm_channels_last(x, 32, weight, bias, 1e-5)
    torch.testing.assert_close(got, F.group_norm(x.contiguous(), 32, weight, bias, 1e-5), atol=5e-5, rtol=1e-5)


@pytest.mark.usefixtures("kernel_path")
def test_an_attentions_transposed_rows_are_normalised_in_place_of_layout(monkeypatch):
    """diffusers' attention normalises (images, pixels, channels) rows transposed to (images, channels, pixels)."""
    monkeypatch.setattr(group_norm_module._SWITCH, "usable", lambda tensor: True)
    ran = []
    kernel = group_norm_module.group_norm_channels_last
    monkeypatch.setattr(group_norm_module, "group_norm_channels_last", lambda *args: ran.append(1) or kernel(*args))
    rows = torch.randn(2, 30, 64) * 2 + 1
    weight, bias = torch.randn(64), torch.randn(64)
    got = group_norm(rows.transpose(1, 2), 32, weight, bias, 1e-6)
    assert ran == [1]
    assert got.shape == (2, 64, 30) and got.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(got, F.group_norm(rows.transpose(1, 2), 32, weight, bias, 1e-6), atol=5e-5, rtol=1e-5)


@pytest.mark.usefixtures("kernel_path")
def test_a_large_mean_does_not_cancel_the_variance():
    """Activations far from zero: a sum-of-squares variance would lose most of its digits in fp32."""
    x = channels_last((1, 64, 16, 16), offset=2000.0) / 100  # mean 20, std 0.03
    weight, bias = torch.ones(64), torch.zeros(64)
    got = group_norm_channels_last(x, 32, weight, bias, 1e-6)
    expected = F.group_norm(x.double().contiguous(), 32, weight.double(), bias.double(), 1e-6).float()
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)
    assert got.std().item() == pytest.approx(1.0, abs=1e-2)


@pytest.mark.usefixtures("kernel_path")
def test_half_precision_in_half_out():
    x = channels_last((2, 64, 6, 6)).half()
    weight, bias = torch.rand(64).half(), torch.rand(64).half()
    got = group_norm_channels_last(x, 32, weight, bias, 1e-5)
    assert got.dtype == torch.float16
    expected = F.group_norm(x.float().contiguous(), 32, weight.float(), bias.float(), 1e-5)
    torch.testing.assert_close(got.float(), expected, atol=2e-3, rtol=2e-3)


@pytest.mark.usefixtures("kernel_path")
def test_same_bits_every_run():
    x = channels_last((2, 320, 8, 8))
    weight, bias = torch.randn(320), torch.randn(320)
    first = group_norm_channels_last(x, 32, weight, bias, 1e-5)
    assert torch.equal(first, group_norm_channels_last(x, 32, weight, bias, 1e-5))


def test_routed_modules_keep_their_weights_and_fall_back_off_the_fast_path():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.GroupNorm(32, 64), torch.nn.GroupNorm(8, 64))
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.randn(1, 3, 10, 10)
    expected = model(x)
    expected_channels_last = model(x.to(memory_format=torch.channels_last))
    assert use_triton_group_norm(model) == 2
    assert use_triton_group_norm(model) == 0  # routing twice changes nothing
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
    # On the CPU (and for NCHW tensors, or with gradients) PyTorch's own group_norm runs: same bits.
    assert torch.equal(model(x), expected)
    assert torch.equal(model(x.to(memory_format=torch.channels_last)), expected_channels_last)
    norm = model[1]
    features = model[0](x)
    assert torch.equal(
        group_norm(features, 32, norm.weight, norm.bias, 1e-5), F.group_norm(features, 32, norm.weight, norm.bias)
    )


def test_kernels_that_fail_to_build_cost_speed_not_the_image(monkeypatch, caplog):
    """Triton compiles on first use and needs a C compiler for its launcher: without one, PyTorch's kernel runs."""
    attempts = []

    def unbuildable(*args):
        attempts.append(args)
        raise RuntimeError("Failed to find C compiler")

    switch = KernelSwitch("GroupNorm")
    monkeypatch.setattr(group_norm_module, "_SWITCH", switch)
    monkeypatch.setattr(group_norm_module, "_runs_in_triton", lambda *args: not switch.failed)
    monkeypatch.setattr(group_norm_module, "group_norm_channels_last", unbuildable)
    x = channels_last((1, 64, 4, 4))
    weight, bias = torch.randn(64), torch.randn(64)
    with caplog.at_level("WARNING", logger="sd_core.triton_support"):
        first = group_norm(x, 32, weight, bias, 1e-5)
        second = group_norm(x, 32, weight, bias, 1e-5)
    assert torch.equal(first, F.group_norm(x, 32, weight, bias, 1e-5)) and torch.equal(first, second)
    assert len(attempts) == 1  # not tried again on every call
    assert "Failed to find C compiler" in caplog.text
