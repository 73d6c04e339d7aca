"""A transformer feed-forward's first projection with GEGLU in its epilogue, as one Triton matrix product.

Measured and not taken (step_benchmark.py, sweep ``geglu in the projection``): it saves the projection's
write and GEGLU's read of it, but Triton's product is slower than cuBLAS's by about what that saves at
SDXL's widths, so sd_core keeps cuBLAS and its own GEGLU kernel (sd_core/geglu.py).

The kernel masks rows only: the input width must be a multiple of a tile's depth and GEGLU's width of its
columns, as they are at every SD1.5 and SDXL level the sweep measures.
"""

import torch
import triton
import triton.language as tl

# (rows, columns, depth, stages, warps) of one program's tile; the depth divides SD's widths (320, 640, 1280).
TILES = [(128, 128, 32, 4, 8), (128, 128, 64, 4, 8), (128, 64, 64, 3, 8), (64, 256, 64, 3, 8), (64, 128, 64, 4, 4)]


@triton.jit
def _projection_geglu(
    x_ptr, w_ptr, b_ptr, out_ptr, rows, depth, inner,
    ROWS: tl.constexpr, COLUMNS: tl.constexpr, DEPTH: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    """One tile of ``value * gelu(gate)`` where ``[value | gate] = x @ w.T + b``: two products share x's tile."""
    program = tl.program_id(0)
    row_programs = tl.cdiv(rows, ROWS)
    in_group = GROUP * tl.cdiv(inner, COLUMNS)
    first_row_program = (program // in_group) * GROUP
    group_size = tl.minimum(row_programs - first_row_program, GROUP)
    row = (first_row_program + (program % in_group) % group_size) * ROWS + tl.arange(0, ROWS)
    column = ((program % in_group) // group_size) * COLUMNS + tl.arange(0, COLUMNS)
    k = tl.arange(0, DEPTH)
    x_at = x_ptr + row[:, None].to(tl.int64) * depth + k[None, :]
    value_at = w_ptr + column[None, :].to(tl.int64) * depth + k[:, None]
    gate_at = value_at + inner * depth
    value = tl.zeros((ROWS, COLUMNS), dtype=tl.float32)
    gate = tl.zeros((ROWS, COLUMNS), dtype=tl.float32)
    for _ in range(0, depth, DEPTH):
        x = tl.load(x_at, mask=row[:, None] < rows, other=0.0)
        value = tl.dot(x, tl.load(value_at), value)
        gate = tl.dot(x, tl.load(gate_at), gate)
        x_at += DEPTH
        value_at += DEPTH
        gate_at += DEPTH
    value += tl.load(b_ptr + column).to(tl.float32)[None, :]
    gate += tl.load(b_ptr + inner + column).to(tl.float32)[None, :]
    product = value * 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    out_at = out_ptr + row[:, None].to(tl.int64) * inner + column[None, :]
    tl.store(out_at, product.to(out_ptr.dtype.element_ty), mask=row[:, None] < rows)


def projection_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tile: tuple) -> torch.Tensor:
    """``geglu(F.linear(x, weight, bias))`` for a contiguous 2-D ``x``, in one kernel with ``tile``."""
    rows_block, columns_block, depth_block, stages, warps = tile
    (rows, depth), inner = x.shape, weight.shape[0] // 2
    out = x.new_empty((rows, inner))
    grid = (triton.cdiv(rows, rows_block) * triton.cdiv(inner, columns_block),)
    _projection_geglu[grid](
        x, weight, bias, out, rows, depth, inner, ROWS=rows_block, COLUMNS=columns_block, DEPTH=depth_block,
        GROUP=8, num_stages=stages, num_warps=warps,
    )  # fmt: skip
    return out
