"""Transformer blocks with their residual adds inside the LayerNorms (sd_core/transformer_block.py,
sd_core/layer_norm.py), against diffusers' own forward: on PyTorch's arithmetic, and through the Triton
kernels run by Triton's interpreter on the CPU (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import AttnProcessor

from sd_core import layer_norm as layer_norm_module
from sd_core.layer_norm import add_layer_norm, layer_norm
from sd_core.transformer_block import fused_forward, is_plain, use_fused_transformer_blocks


def noisy(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 3 + 2).to(dtype)


def a_layer_norm(width: int, seed: int = 0) -> torch.nn.LayerNorm:
    norm = torch.nn.LayerNorm(width)
    with torch.no_grad():
        norm.weight.copy_(noisy((width,), seed))
        norm.bias.copy_(noisy((width,), seed + 1))
    return norm


@pytest.fixture
def kernels_on_cpu(monkeypatch) -> list[bool]:
    """Run the LayerNorm kernel through Triton's interpreter; the list records each launch (True: with add)."""
    monkeypatch.setattr(layer_norm_module._SWITCH, "usable", lambda tensor: True)
    launches: list[bool] = []
    launch = layer_norm_module._launch
    monkeypatch.setattr(
        layer_norm_module, "_launch", lambda norm, x, *rest: launches.append(bool(rest)) or launch(norm, x, *rest)
    )
    return launches


@pytest.mark.parametrize(
    ("shape", "dtype", "tolerance"),
    [
        ((2, 37, 40), torch.float32, 1e-5),  # a width that is not a power of two, rows that do not fill a tile
        ((3, 320), torch.float32, 1e-5),
        ((2, 9, 96), torch.float16, 4e-3),
    ],
)
def test_layer_norm_kernel_matches_pytorch(shape, dtype, tolerance, kernels_on_cpu):
    norm = a_layer_norm(shape[-1]).to(dtype)
    update, bias, residual = noisy(shape, 2, dtype), noisy(shape[-1:], 3, dtype), noisy(shape, 4, dtype)
    with torch.no_grad():
        got = layer_norm(residual, norm)
        summed, normed = add_layer_norm(update, bias, residual, norm)
        expected_sum = residual.float() + (update.float() + bias.float())
        expected_normed = norm.float()(expected_sum.to(dtype).float())
    assert kernels_on_cpu == [False, True]
    torch.testing.assert_close(got.float(), norm.float()(residual.float()), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(summed.float(), expected_sum, atol=tolerance * 10, rtol=tolerance)
    torch.testing.assert_close(normed.float(), expected_normed, atol=tolerance, rtol=tolerance)
    assert summed.dtype == normed.dtype == dtype


def test_carried_bias_joins_the_stored_sum_but_not_the_normalised_one(kernels_on_cpu):
    shape, dtype = (2, 9, 96), torch.float16
    norm = a_layer_norm(96).to(dtype)
    update, bias, residual = noisy(shape, 5, dtype), noisy((96,), 6, dtype), noisy(shape, 7, dtype)
    carried_bias = noisy((96,), 8, dtype)
    with torch.no_grad():
        summed, normed = add_layer_norm(update, bias, residual, norm)
        carried, carried_normed = add_layer_norm(update, bias, residual, norm, carried_bias=carried_bias)
    assert kernels_on_cpu == [True, True]
    assert torch.equal(carried_normed, normed)
    torch.testing.assert_close(carried, summed + carried_bias, atol=0, rtol=0)


def block_and_inputs(seed: int = 0, fused_projections: bool = False, **settings):
    torch.manual_seed(seed)
    block = BasicTransformerBlock(
        32, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=24, **settings
    ).eval()
    with torch.no_grad():  # diffusers initialises norms to identity and biases to zero: make them matter
        for parameter in block.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    if fused_projections:
        block.attn1.fuse_projections()
        block.attn2.fuse_projections()
    return block, torch.randn(2, 10, 32) * 2, torch.randn(2, 7, 24)


@pytest.mark.parametrize("fused_projections", [False, True])
def test_pytorch_arithmetic_matches_diffusers(fused_projections):
    block, x, text = block_and_inputs(fused_projections=fused_projections)
    with torch.no_grad():
        expected = block(x, encoder_hidden_states=text)
        got = fused_forward(block, x, encoder_hidden_states=text)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("fused_projections", [False, True])
def test_triton_kernels_match_diffusers(fused_projections, kernels_on_cpu):
    block, x, text = block_and_inputs(seed=1, fused_projections=fused_projections)
    with torch.no_grad():
        expected = block(x, encoder_hidden_states=text)
        got = fused_forward(block, x, encoder_hidden_states=text)
    assert kernels_on_cpu == [False, True, True]  # every norm of the block, two with the residual add
    torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("settings", "adds_in_place"),
    [({}, True), ({"final_dropout": True}, True), ({"ff_bias": False}, False)],
)
def test_feed_forward_adds_its_product_onto_the_residual(settings, adds_in_place, kernels_on_cpu):
    """The feed-forward's output layer accumulates onto the residual (which carries its bias) where it has a
    bias; a feed-forward without one runs as diffusers' module, and the residual is added after it."""
    block, x, text = block_and_inputs(seed=4, **settings)
    with torch.no_grad():
        expected = block(x, encoder_hidden_states=text)
        calls = []
        ff_forward = block.ff.forward
        block.ff.forward = lambda *args: calls.append(True) or ff_forward(*args)
        got = fused_forward(block, x, encoder_hidden_states=text)
    assert calls == ([] if adds_in_place else [True])
    torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5)


def unusual_processor(block: BasicTransformerBlock) -> None:
    block.attn2.set_processor(AttnProcessor())  # stands in for IP-Adapter's or a user's processor


def rescaled_output(block: BasicTransformerBlock) -> None:
    block.attn1.rescale_output_factor = 2.0  # which the fused attention would not divide by


def chunked_feed_forward(block: BasicTransformerBlock) -> None:
    block.set_chunk_feed_forward(chunk_size=5, dim=1)


@pytest.mark.parametrize("change", [unusual_processor, rescaled_output, chunked_feed_forward])
def test_blocks_the_fused_forward_does_not_reproduce_keep_diffusers_forward(change, kernels_on_cpu):
    block, x, text = block_and_inputs(seed=2)
    change(block)
    with torch.no_grad():
        expected = block(x, encoder_hidden_states=text)
        got = fused_forward(block, x, encoder_hidden_states=text)
    assert kernels_on_cpu == []
    assert torch.equal(got, expected)


def test_calls_with_an_attention_mask_keep_diffusers_forward(kernels_on_cpu):
    block, x, text = block_and_inputs(seed=3)
    mask = torch.ones(2, 7)
    mask[:, -2:] = 0  # the last two text tokens hidden from cross-attention
    with torch.no_grad():
        expected = block(x, encoder_hidden_states=text, encoder_attention_mask=mask)
        got = fused_forward(block, x, encoder_hidden_states=text, encoder_attention_mask=mask)
    assert kernels_on_cpu == []
    assert torch.equal(got, expected)


def test_only_plain_blocks_are_routed_and_weights_stay():
    plain, x, text = block_and_inputs()
    ada_norm = BasicTransformerBlock(32, 2, 16, cross_attention_dim=24, norm_type="ada_norm", num_embeds_ada_norm=4)
    self_only = BasicTransformerBlock(32, 2, 16, only_cross_attention=True, cross_attention_dim=24)
    model = torch.nn.ModuleList([plain, ada_norm.eval(), self_only.eval()])
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert [is_plain(block) for block in model] == [True, False, False]
    with torch.no_grad():
        expected = plain(x, encoder_hidden_states=text)
        assert use_fused_transformer_blocks(model) == 1
        assert use_fused_transformer_blocks(model) == 0
        torch.testing.assert_close(plain(x, encoder_hidden_states=text), expected, atol=2e-5, rtol=1e-5)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
