"""nGPT normalization: any flat row-major partition gives the full-matrix result."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.normalize import (
    mark_normalized,
    matrix_fragment,
    normalize_fragments_,
    normalize_matrix_,
    normalize_model_,
    normalized_dim,
    partial_sum_of_squares,
    scale_fragment_,
)
from megatron_ngpt.models.transformer_config import build_transformer_config
from tests.distributed import run_on_ranks
from tests.models.normalize_cases import (
    MATRICES,
    TOL,
    expected,
    flatten,
    make_matrices,
    random_bounds,
    rank_fragments,
    unflatten,
)
from tests.tiny import tiny_config

TOTAL = sum(shape[0] * shape[1] for shape, _ in MATRICES)
# Offsets that cut the one-row (1, 13) matrix and the one-column (13, 1) matrix over four ranks.
ROW_START = 5 * 7 + 6 * 4
ROW_SPLIT = [0, ROW_START + 3, ROW_START + 6, ROW_START + 13 + 5, TOTAL]


def normalize_emulated(matrices: list[torch.Tensor], bounds: list[int]) -> list[torch.Tensor]:
    """Each "rank" owns flat[bounds[r]:bounds[r + 1]]; the group all-reduce is a plain sum."""
    flat = flatten(matrices)
    pieces = [flat[lo:hi].clone() for lo, hi in pairwise(bounds)]
    frags = [rank_fragments(piece, lo) for piece, lo in zip(pieces, bounds[:-1], strict=True)]
    sums = [sum(partial_sum_of_squares(rank[i]) for rank in frags) for i in range(len(MATRICES))]
    for rank in frags:
        for frag, total in zip(rank, sums, strict=True):
            scale_fragment_(frag, total.rsqrt())
    return unflatten(torch.cat(pieces))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_random_flat_partitions_match_full_matrix(dtype, ranks: int, seed: int) -> None:
    matrices = make_matrices(dtype, seed)
    bounds = random_bounds(TOTAL, ranks, seed)
    for got, want in zip(normalize_emulated(matrices, bounds), expected(matrices), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bounds", [ROW_SPLIT, [0, 0, TOTAL, TOTAL], [0, 1, TOTAL - 1, TOTAL]],
                         ids=["row-and-column-over-4-ranks", "empty-ranks", "single-elements"])
def test_cut_rows_and_empty_fragments(dtype, bounds: list[int]) -> None:
    matrices = make_matrices(dtype)
    for got, want in zip(normalize_emulated(matrices, bounds), expected(matrices), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_whole_matrices_without_group(dtype) -> None:
    matrices = make_matrices(dtype)
    dims = [dim for _, dim in MATRICES]
    normalize_fragments_([matrix_fragment(m, d) for m, d in zip(matrices, dims, strict=True)])
    for got, want in zip(matrices, expected(make_matrices(dtype)), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=TOL[dtype])
    single = make_matrices(dtype)[1]
    normalize_matrix_(single, MATRICES[1][1])
    torch.testing.assert_close(single.norm(dim=0), torch.ones(single.shape[1], dtype=dtype))


def test_mark_normalized_rejects_vectors_and_bad_dims() -> None:
    with pytest.raises(ValueError, match="expected a matrix"):
        mark_normalized(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="expected a matrix"):
        mark_normalized(torch.zeros(4, 4), 2)


@pytest.mark.parametrize("arch", ["ngpt", "gpt2"])
def test_normalize_model_renormalizes_every_marked_matrix(single_rank, arch: str) -> None:
    cfg = tiny_config(arch).model
    model = LanguageModel(build_transformer_config(cfg, 256))
    marked = [p for p in model.parameters() if normalized_dim(p) is not None]
    assert len(marked) == (2 + 4 * cfg.num_layers if arch == "ngpt" else 0)
    with torch.no_grad():
        for p in marked:
            p.mul_(torch.rand_like(p) + 0.5)
    assert normalize_model_(model) == len(marked)
    for p in marked:
        norms = p.detach().norm(dim=normalized_dim(p))
        torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.slow
def test_three_rank_group_all_reduce() -> None:
    """The real path: `normalize_fragments_(..., group)` on 3 gloo ranks (float32 and float64)."""
    checked = run_on_ranks(3, "tests.models.normalize_worker:check_all", timeout=120)
    assert checked == [14, 14, 14]  # 7 partitions x 2 dtypes, on every rank
