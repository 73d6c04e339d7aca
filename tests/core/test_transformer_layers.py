"""The transformer-block speed-ups of the graph path, on the CPU: the fused GEGLU kernel (through Triton's
interpreter, tests/conftest.py) and the channels-last output step, each against diffusers' own arithmetic."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import FeedForward
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from sd_core.channels_last import (
    convert_weights_to_channels_last,
    keep_transformer_outputs_channels_last,
    pointwise_convolution,
    use_matmuls_for_pointwise_convolutions,
)
from sd_core.geglu import geglu, plain_geglu, use_fused_geglu


@pytest.mark.parametrize(
    ("shape", "dtype", "tolerance"),
    [
        ((2, 17, 2 * 300), torch.float32, 1e-5),  # a width that is not a multiple of the kernel's block
        ((1, 64, 2 * 512), torch.float32, 1e-5),
        ((3, 2 * 256), torch.float16, 2e-3),
    ],
)
def test_fused_geglu_matches_diffusers(shape, dtype, tolerance):
    projected = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    got = geglu(projected)
    assert got.shape == (*shape[:-1], shape[-1] // 2) and got.dtype == dtype
    expected = plain_geglu(projected.float()).to(dtype)
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_routed_feed_forward_keeps_its_weights_and_output():
    torch.manual_seed(0)
    feed_forward = FeedForward(32, activation_fn="geglu")
    x = torch.randn(2, 5, 32)
    expected = feed_forward(x)
    state = {name: tensor.clone() for name, tensor in feed_forward.state_dict().items()}
    assert use_fused_geglu(feed_forward) == 1
    assert use_fused_geglu(feed_forward) == 0
    assert torch.equal(feed_forward(x), expected)  # CPU: diffusers' arithmetic, same bits
    assert all(torch.equal(feed_forward.state_dict()[name], tensor) for name, tensor in state.items())


@pytest.mark.parametrize("linear_projection", [False, True])
def test_transformer_output_stays_channels_last_with_the_same_values(linear_projection):
    torch.manual_seed(0)
    block = Transformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=32,
        norm_num_groups=8,
        cross_attention_dim=24,
        use_linear_projection=linear_projection,
    ).eval()
    block.to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 6, 5).to(memory_format=torch.channels_last)
    text = torch.randn(2, 7, 24)
    with torch.no_grad():
        expected = block(x, encoder_hidden_states=text).sample
        assert keep_transformer_outputs_channels_last(block) == 1
        assert keep_transformer_outputs_channels_last(block) == 0
        got = block(x, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)  # no NCHW copy on the way out


def test_a_different_diffusers_output_step_is_left_alone():
    class FutureTransformer(torch.nn.Module):
        def _get_output_for_continuous_inputs(self, hidden_states, residual, shape):  # another signature
            return hidden_states

    module = FutureTransformer()
    assert keep_transformer_outputs_channels_last(module) == 0
    assert "_get_output_for_continuous_inputs" not in module.__dict__


def test_pointwise_convolutions_run_as_matrix_products_with_the_same_values():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 1),  # pointwise: routed
        torch.nn.Conv2d(16, 16, 3, padding=1),  # not
        torch.nn.Conv2d(16, 4, 1, bias=False),  # pointwise without bias: routed
        torch.nn.Conv2d(4, 4, 1, stride=2),  # strided: not
    ).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 5, 7)
    expected = model(x)
    assert use_matmuls_for_pointwise_convolutions(model) == 2
    assert use_matmuls_for_pointwise_convolutions(model) == 0
    channels_last_input = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(channels_last_input), expected, atol=1e-5, rtol=1e-5)
    assert model[0](channels_last_input).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x), expected)  # NCHW input: the convolutions themselves
    other_bias = torch.randn(16)
    torch.testing.assert_close(
        pointwise_convolution(model[0], channels_last_input, other_bias),
        torch.nn.functional.conv2d(x, model[0].weight, other_bias),
        atol=1e-5,
        rtol=1e-5,
    )


def test_weights_converted_to_channels_last_in_place_keep_values_and_sharing():
    torch.manual_seed(0)
    shared = torch.nn.Conv2d(4, 4, 3, padding=1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), shared, shared, torch.nn.Conv2d(4, 8, 1))
    net.register_buffer("kernel", torch.randn(2, 3, 5, 5))
    x = torch.randn(1, 3, 8, 8)
    expected, before = net(x), {name: t.clone() for name, t in net.state_dict().items()}
    assert convert_weights_to_channels_last(net) == 3  # the 1x1 weight is channels-last already; shared once
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, before[name], atol=0, rtol=0)
        assert tensor.dim() != 4 or tensor.is_contiguous(memory_format=torch.channels_last), name
    assert net[1].weight is net[2].weight
    torch.testing.assert_close(net(x), expected)
