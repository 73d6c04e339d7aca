"""Transformer blocks with each residual add inside the LayerNorm that follows it.

Why: diffusers' ``BasicTransformerBlock`` (self-attention, cross-attention, feed-forward, each behind a
LayerNorm and around a residual) spends a third of its non-matmul time on passes that do almost no
arithmetic: PyTorch's LayerNorm kernel, the output projection's bias, the residual adds, and each attention's
division by ``rescale_output_factor`` (1.0). SD1.5 + ControlNet has 23 such blocks a step.

How: each attention's output projection runs without its bias, and one kernel (sd_core/layer_norm.py) adds
the bias and the residual and normalises the sum for the next layer. The last of those kernels also adds the
feed-forward's output bias to the residual it stores, and the feed-forward's output product is added onto that
residual in place (the matrix product's own accumulate), so the block's last residual add costs no pass.
The attention itself is what diffusers' ``AttnProcessor2_0`` and ``FusedAttnProcessor2_0`` compute (the same
projections, the same SDPA call), without the division. Only where that is all a block does: a block with
another norm (ada-norm, PixArt's), a position embedding, chunked feed-forward, an attention mask, cross-attention
kwargs (GLIGEN, LoRA scales), or any other attention processor (IP-Adapter's, a user's) keeps diffusers' own
forward, checked on every call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

from sd_core.layer_norm import add_layer_norm, layer_norm
from sd_core.triton_support import route_forward


def use_fused_transformer_blocks(module: torch.nn.Module) -> int:
    """Route every plain ``BasicTransformerBlock`` inside ``module`` through ``fused_forward``; returns how many."""
    return route_forward(module, BasicTransformerBlock, fused_forward, applies=is_plain)


def is_plain(block: BasicTransformerBlock) -> bool:
    """The block shape the fused forward reproduces: LayerNorm, self-attention, LayerNorm, cross-attention,
    LayerNorm, feed-forward, each added to the residual."""
    return (
        block.norm_type == "layer_norm"
        and block.pos_embed is None
        and not block.only_cross_attention
        and block.attn2 is not None
        and all(
            isinstance(norm, torch.nn.LayerNorm) and norm.weight is not None and norm.bias is not None
            for norm in (block.norm1, block.norm2, block.norm3)
        )
    )


def fused_forward(
    block: BasicTransformerBlock,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    timestep: Any = None,
    cross_attention_kwargs: dict[str, Any] | None = None,
    class_labels: Any = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``BasicTransformerBlock.forward`` (same arguments, same arithmetic) with the residual adds in the norms.

    In half precision it rounds differently: stock rounds each output projection with its bias, then the sum.
    Here an attention's projection is rounded, and bias and residual are added to it in fp32 and rounded once;
    the feed-forward's bias is added to the rounded residual (rounded again), and its product onto that, in the
    matrix product's fp32 accumulator, rounded once.
    """
    if (
        block.training
        or hidden_states.dim() != 3
        or attention_mask is not None
        or encoder_attention_mask is not None
        or cross_attention_kwargs
        or block._chunk_size is not None
        or not (_is_plain_attention(block.attn1) and _is_plain_attention(block.attn2))
    ):
        return BasicTransformerBlock.forward(
            block, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, timestep,
            cross_attention_kwargs, class_labels, added_cond_kwargs,
        )  # fmt: skip
    normed = layer_norm(hidden_states, block.norm1)
    update, bias = _attention_before_bias(block.attn1, normed, None)
    hidden_states, normed = add_layer_norm(update, bias, hidden_states, block.norm2)
    update, bias = _attention_before_bias(block.attn2, normed, encoder_hidden_states)
    output = _feed_forward_output(block.ff)
    if output is None:
        hidden_states, normed = add_layer_norm(update, bias, hidden_states, block.norm3)
        return block.ff(normed) + hidden_states
    # The residual comes with the output layer's bias already added, and the product is added onto it in place.
    carried, normed = add_layer_norm(update, bias, hidden_states, block.norm3, carried_bias=output.bias)
    activated = block.ff.net[0](normed)
    rows = carried.view(-1, carried.shape[-1])
    rows.addmm_(activated.reshape(rows.shape[0], -1), output.weight.t())
    return carried


def _feed_forward_output(ff: torch.nn.Module) -> torch.nn.Linear | None:
    """The output layer of a diffusers ``FeedForward`` that is activation, dropout, that layer (with a bias) and
    maybe a final dropout (identities when not training); None for any other feed-forward."""
    net = getattr(ff, "net", None)
    if not isinstance(net, torch.nn.ModuleList) or len(net) not in (3, 4):
        return None
    dropouts = [net[1], *net[3:]]
    output = net[2]
    if type(output) is not torch.nn.Linear or output.bias is None or ff.training:
        return None
    return output if all(type(layer) is torch.nn.Dropout and not layer.training for layer in dropouts) else None


def _is_plain_attention(attention: Attention) -> bool:
    """An attention that diffusers' stock SDPA processors run and ``_attention_before_bias`` reproduces."""
    output = attention.to_out[0]
    return (
        type(attention.processor) in (AttnProcessor2_0, FusedAttnProcessor2_0)
        and attention.spatial_norm is None
        and attention.group_norm is None
        and attention.norm_q is None
        and attention.norm_k is None
        and attention.norm_cross is None
        and not attention.residual_connection
        and attention.rescale_output_factor == 1.0
        and type(output) is torch.nn.Linear
        and output.bias is not None
    )


def _attention_before_bias(
    attention: Attention, x: torch.Tensor, context: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention's output projection without its bias, and that bias (the stock processor adds them)."""
    fused = type(attention.processor) is FusedAttnProcessor2_0
    if context is None:
        if fused:
            query, key, value = attention.to_qkv(x).chunk(3, dim=-1)
        else:
            query, key, value = attention.to_q(x), attention.to_k(x), attention.to_v(x)
    else:
        query = attention.to_q(x)
        if fused:
            key, value = attention.to_kv(context).chunk(2, dim=-1)
        else:
            key, value = attention.to_k(context), attention.to_v(context)
    batch, heads = x.shape[0], attention.heads
    head_dim = key.shape[-1] // heads
    query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
    attended = F.scaled_dot_product_attention(query, key, value)
    attended = attended.transpose(1, 2).reshape(batch, -1, heads * head_dim)
    output = attention.to_out[0]
    return F.linear(attended, output.weight), output.bias
