"""nGPT weight normalization that is correct for any shard of a matrix.

Every nGPT matrix is kept unit-norm along its embedding dimension. A parameter says which of its
dimensions that is through the attribute set by :func:`mark_normalized`:

- ``dim=1``: every *row* has unit norm (the norm runs over the columns), e.g. ``W_q [H*d_h, d]``;
- ``dim=0``: every *column* has unit norm, e.g. ``W_o [d, H*d_h]``.

A rank may own only part of a matrix. Tensor parallelism keeps whole rows/columns local, but ZeRO
flat partitions cut them at arbitrary offsets. :func:`normalize_fragments_` takes flat,
row-major fragments with their offsets, computes partial sums of squares per row (or column),
reduces them over the process group that shares the matrix in one ``all_reduce`` for all matrices
together, and scales every fragment in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

NORM_DIM_ATTR = "ngpt_norm_dim"


def mark_normalized(param: torch.Tensor, dim: int) -> None:
    """Record that `param` (a 2-D matrix) is normalized over dimension `dim` (1: rows, 0: cols)."""
    if param.dim() != 2 or dim not in (0, 1):
        raise ValueError(f"expected a matrix and dim 0 or 1, got shape {tuple(param.shape)}, {dim}")
    setattr(param, NORM_DIM_ATTR, dim)


def normalized_dim(param: torch.Tensor) -> int | None:
    """The dimension `param` is normalized over, or None for parameters that are not normalized."""
    return getattr(param, NORM_DIM_ATTR, None)


@dataclass
class Fragment:
    """Flat, row-major elements ``[start, start + data.numel())`` of a ``shape`` matrix."""

    data: torch.Tensor  # 1-D, writable (a view into the parameter or the fp32 master partition)
    shape: tuple[int, int]
    dim: int
    start: int = 0

    @property
    def num_vectors(self) -> int:
        """How many vectors are normalized: rows for dim=1, columns for dim=0."""
        return self.shape[0] if self.dim == 1 else self.shape[1]


def _blocks(frag: Fragment) -> Iterator[tuple[torch.Tensor, int, int]]:
    """Split a fragment into rectangular blocks: (block [r, c], first row, first column).

    A fragment is at most a partial first row, whole middle rows and a partial last row.
    """
    cols = frag.shape[1]
    flat, pos, end = frag.data, frag.start, frag.start + frag.data.numel()
    offset = 0
    while pos < end:
        row, col = divmod(pos, cols)
        if col == 0 and end - pos >= cols:
            nrows = (end - pos) // cols
            length = nrows * cols
            yield flat[offset : offset + length].view(nrows, cols), row, 0
        else:
            length = min(cols - col, end - pos)
            yield flat[offset : offset + length].view(1, length), row, col
        offset += length
        pos += length


def _accumulate_dtype(frag: Fragment) -> torch.dtype:
    return torch.float64 if frag.data.dtype == torch.float64 else torch.float32


def partial_sum_of_squares(frag: Fragment, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-vector sums of squares of the elements this fragment holds (zeros elsewhere)."""
    dtype = dtype or _accumulate_dtype(frag)
    out = torch.zeros(frag.num_vectors, dtype=dtype, device=frag.data.device)
    for block, row, col in _blocks(frag):
        sq = block.to(dtype).square()
        if frag.dim == 1:
            out[row : row + block.shape[0]] += sq.sum(dim=1)
        else:
            out[col : col + block.shape[1]] += sq.sum(dim=0)
    return out


def scale_fragment_(frag: Fragment, inv_norm: torch.Tensor) -> None:
    """Multiply each element by the inverse norm of the vector it belongs to."""
    for block, row, col in _blocks(frag):
        if frag.dim == 1:
            factor = inv_norm[row : row + block.shape[0]].unsqueeze(1)
        else:
            factor = inv_norm[col : col + block.shape[1]].unsqueeze(0)
        block.copy_((block.to(factor.dtype) * factor).to(block.dtype))


def normalize_fragments_(
    fragments: Sequence[Fragment], group: dist.ProcessGroup | None = None
) -> None:
    """Normalize every fragment in place, with full sums of squares.

    `group` is the process group whose ranks hold the other fragments of the same matrices (the
    data-parallel group for ZeRO partitions); None when each rank holds whole rows/columns. With a
    group, every rank must pass fragments of the same matrices in the same order (empty ones
    included), because their partial sums travel in one all-reduce.
    """
    if not fragments:
        return
    wide = any(f.data.dtype == torch.float64 for f in fragments)
    dtype = torch.float64 if wide else torch.float32
    partials = [partial_sum_of_squares(f, dtype) for f in fragments]
    sums = torch.cat(partials)
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    inv_norms = sums.clamp_min(torch.finfo(dtype).tiny).rsqrt()
    for frag, inv in zip(fragments, inv_norms.split([p.numel() for p in partials]), strict=True):
        scale_fragment_(frag, inv)


def matrix_fragment(weight: torch.Tensor, dim: int) -> Fragment:
    """A fragment covering a whole (locally held) matrix."""
    return Fragment(weight.detach().view(-1), tuple(weight.shape), dim, 0)


@torch.no_grad()
def normalize_matrix_(weight: torch.Tensor, dim: int) -> None:
    """Normalize a whole matrix in place along `dim` (rows for 1, columns for 0)."""
    normalize_fragments_([matrix_fragment(weight, dim)])


@torch.no_grad()
def normalize_model_(model: torch.nn.Module) -> int:
    """Normalize every marked matrix of `model` in place; returns how many were normalized.

    Tensor-parallel shards hold whole rows (column-parallel) or whole columns (row-parallel), so
    no communication is needed here.
    """
    fragments = [
        matrix_fragment(p, normalized_dim(p))
        for p in model.parameters()
        if normalized_dim(p) is not None
    ]
    normalize_fragments_(fragments)
    return len(fragments)
