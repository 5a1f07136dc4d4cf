"""nGPT's per-layer elementwise work, fused by `torch.compile` on GPU.

Beyond GPT-2, every nGPT layer normalizes q and k per head and makes two spherical residual
updates ``norm(h + |alpha| * (norm(x) - h))``. They cost almost no FLOPs, but in eager mode each is
a chain of memory-bound kernels (square, sum, rsqrt, scale, subtract, ...) and the backward pass
doubles it. `torch.compile` fuses each chain into a few kernels.

The eager functions below are the definition; their compiled versions are used only for CUDA
tensors (compiling on CPU costs more than it saves) and give the same numbers up to rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / ||x||_2 over `dim` (nGPT's `norm`), accumulated in at least float32."""
    acc = x.to(torch.promote_types(x.dtype, torch.float32))
    return (acc * acc.square().sum(dim, keepdim=True).clamp_min(1e-30).rsqrt()).to(x.dtype)


def _residual_update(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``norm(h + |alpha| * (norm(x) - h))`` with `alpha` the effective (float32) eigen rate."""
    return l2_normalize(h + alpha.abs().to(h.dtype) * (l2_normalize(x) - h))


def _normalize_qk(
    query: torch.Tensor, key: torch.Tensor, s_qk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each ``[s, b, heads, d_head]`` head of q and k on the unit sphere, times `s_qk`."""
    scale = s_qk.to(query.dtype).view(-1, query.shape[-1])  # [heads, d_head]
    return l2_normalize(query) * scale, l2_normalize(key) * scale


class CudaCompiled:
    """`fn` run eagerly, or compiled (on first use) when asked and the first input is on CUDA.

    Shapes are static (`dynamic=False`): a training run sees one shape per function, and static
    kernels are the fastest; a new shape costs one recompilation.
    """

    def __init__(self, fn: Callable) -> None:
        self.eager = fn
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def compiled(self) -> Callable:
        return torch.compile(self.eager, dynamic=False)

    def __call__(self, *args: torch.Tensor, use_compiled: bool = True):
        # Inside a compiled layer (`model.compile_layers`) the eager definition is traced into the
        # layer's graph and fused there with its neighbours.
        compiled = use_compiled and args[0].is_cuda and not torch.compiler.is_compiling()
        return (self.compiled if compiled else self.eager)(*args)


residual_update = CudaCompiled(_residual_update)
normalize_qk = CudaCompiled(_normalize_qk)
