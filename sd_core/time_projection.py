"""Every ResNet block's time-embedding projection of a network, as one matrix product a step.

Why: each ``ResnetBlock2D`` of a UNet or ControlNet projects the same time embedding (SiLU, then its own
``time_emb_proj``): for SD1.5 + ControlNet that is 34 SiLU kernels and 34 matrix products of two rows a
step, each too small to use the GPU and each paying a launch. Stacked, the projections are one SiLU and
one product that reads the same weights.

How: the blocks' projection weights and biases are stacked into one matrix, and each block's own weights
become a view of its rows (one copy in memory, the module tree and state dict unchanged). The first block
of a forward to see a time embedding projects it for all; the others take their columns of that result,
while the very same, unmodified embedding tensor comes back (not held: once the forward drops it, the
product goes too). Each column is the dot product the block's own layer computes (summed in an order of
cuBLAS's choosing, as ever). Once the blocks' weights stop being views of the stack (the network was moved
or recast), each block projects on its own again.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D


class TimeProjections:
    """The stacked time-embedding projections of some ResNet blocks of one network."""

    def __init__(self, blocks: list[ResnetBlock2D]) -> None:
        self.blocks = blocks
        self._columns: dict[int, slice] = {}
        start = 0
        for block in blocks:
            rows = block.time_emb_proj.out_features
            self._columns[id(block)] = slice(start, start + rows)
            start += rows
        layers = [block.time_emb_proj for block in blocks]
        self._weight: torch.Tensor | None = torch.cat([layer.weight.data for layer in layers])
        self._bias: torch.Tensor | None = torch.cat([layer.bias.data for layer in layers])
        for block, layer in zip(blocks, layers, strict=True):
            rows = self._columns[id(block)]
            layer.weight.data = self._weight[rows]
            layer.bias.data = self._bias[rows]
        self._last: tuple[weakref.ref, int, torch.Tensor] | None = None

    @staticmethod
    def projected_by(block: ResnetBlock2D) -> bool:
        """A block whose time embedding goes through SiLU, then a linear layer with a bias."""
        layer = block.time_emb_proj
        return (
            type(layer) is torch.nn.Linear
            and layer.bias is not None
            and not block.skip_time_act
            and isinstance(block.nonlinearity, torch.nn.SiLU)
        )

    def covers(self, block: ResnetBlock2D) -> bool:
        return id(block) in self._columns

    def of(self, block: ResnetBlock2D, embedding: torch.Tensor) -> torch.Tensor:
        """``block.time_emb_proj(silu(embedding))``, from one product for all the blocks."""
        last = self._last
        if self._weight is not None and (last is None or last[0]() is not embedding or last[1] != embedding._version):
            if self._still_stacked():
                projected = F.linear(F.silu(embedding), self._weight, self._bias)
                last = self._last = (weakref.ref(embedding, self._forget), embedding._version, projected)
            else:
                # The network was moved or its weights replaced: each block projects on its own from now on. No
                # new stack here: inside a forward (a graph's warm-up) it would come from the graphs' memory pool.
                self._weight = self._bias = None
                self._last = last = None
        if last is None:
            return block.time_emb_proj(F.silu(embedding))
        return last[2][:, self._columns[id(block)]]

    def _forget(self, embedding: weakref.ref) -> None:
        """The forward's embedding is gone: so goes its projection (memory a dropped CUDA graph pool may own)."""
        if self._last is not None and self._last[0] is embedding:
            self._last = None

    def _still_stacked(self) -> bool:
        assert self._weight is not None and self._bias is not None
        return all(
            block.time_emb_proj.weight.data_ptr() == self._weight[self._columns[id(block)]].data_ptr()
            and block.time_emb_proj.bias.data_ptr() == self._bias[self._columns[id(block)]].data_ptr()
            for block in self.blocks
        )
