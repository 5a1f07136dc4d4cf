"""Three gloo ranks normalize their flat partitions with one all-reduce (test_normalize.py, through
`run_on_ranks`).

Every rank builds the same matrices, keeps only its piece of the flat buffer, normalizes it with
`normalize_fragments_(..., group)`, and the pieces put back together must equal the matrices
normalized whole. Raises (non-zero exit) on any mismatch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_ngpt.models.normalize import normalize_fragments_
from tests.models.normalize_cases import (
    TOL,
    expected,
    flatten,
    make_matrices,
    random_bounds,
    rank_fragments,
    unflatten,
)


def check(dtype: torch.dtype, bounds: list[int]) -> None:
    rank = dist.get_rank()
    matrices = make_matrices(dtype, seed=len(bounds) + bounds[1])
    flat = flatten(matrices)
    lo, hi = bounds[rank], bounds[rank + 1]
    piece = flat[lo:hi].clone()
    normalize_fragments_(rank_fragments(piece, lo), group=dist.group.WORLD)
    gathered = torch.zeros_like(flat)
    gathered[lo:hi] = piece
    dist.all_reduce(gathered)  # the pieces are disjoint, so the sum reassembles the buffer
    for got, want in zip(unflatten(gathered), expected(matrices), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=TOL[dtype])


def check_all() -> int:
    """Every partition case in both dtypes; returns how many were checked."""
    total = flatten(make_matrices(torch.float32)).numel()
    cases = [random_bounds(total, 3, seed) for seed in range(4)]
    cases += [[0, 0, 40, total], [0, 61, 65, total], [0, total, total, total]]
    for dtype in (torch.float64, torch.float32):
        for bounds in cases:
            check(dtype, bounds)
    return 2 * len(cases)
