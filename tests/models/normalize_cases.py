"""Matrices and flat partitions shared by the single-process and the 3-rank normalization tests.

A "partition" cuts the row-major concatenation of several matrices (like a ZeRO flat buffer) into
one contiguous piece per rank; a rank's fragment of a matrix is that piece's overlap with it.
"""

from __future__ import annotations

import torch

from megatron_ngpt.models.normalize import Fragment

# (shape, normalized dim): rows (1) or columns (0), long rows, one row, one column.
MATRICES = [((5, 7), 1), ((6, 4), 0), ((1, 13), 1), ((13, 1), 0), ((3, 16), 1), ((8, 3), 0)]
# Absolute tolerance of a normalized entry against `expected`.
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def make_matrices(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for shape, _ in MATRICES]


def expected(matrices: list[torch.Tensor]) -> list[torch.Tensor]:
    dims = [dim for _, dim in MATRICES]
    return [m / m.norm(dim=dim, keepdim=True) for m, dim in zip(matrices, dims, strict=True)]


def random_bounds(total: int, ranks: int, seed: int) -> list[int]:
    """ranks + 1 sorted offsets from 0 to total; repeated offsets give empty partitions."""
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.randint(0, total + 1, (ranks - 1,), generator=gen).sort().values.tolist()
    return [0, *cuts, total]


def flatten(matrices: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([m.reshape(-1) for m in matrices])


def unflatten(flat: torch.Tensor) -> list[torch.Tensor]:
    sizes = [shape[0] * shape[1] for shape, _ in MATRICES]
    return [part.view(shape) for part, (shape, _) in zip(flat.split(sizes), MATRICES, strict=True)]


def rank_fragments(local: torch.Tensor, lo: int) -> list[Fragment]:
    """Fragments (views into `local`) of every matrix for the rank that holds the flat elements
    ``[lo, lo + local.numel())``, empty ones included, in matrix order."""
    frags, offset, hi = [], 0, lo + local.numel()
    for shape, dim in MATRICES:
        size = shape[0] * shape[1]
        start = min(max(lo, offset), offset + size)
        end = max(min(hi, offset + size), start)
        frags.append(Fragment(local[start - lo : end - lo], shape, dim, start - offset))
        offset += size
    return frags
