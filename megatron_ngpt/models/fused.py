"""nGPT's per-layer elementwise work, and which implementation runs it.

Beyond GPT-2, every nGPT layer normalizes q and k per head and makes two spherical residual
updates ``norm(h + |alpha| * (norm(x) - h))``. They cost almost no FLOPs, but in eager mode each is
a chain of memory-bound kernels (square, sum, rsqrt, scale, subtract, ...) and the backward pass
doubles it.

The eager functions below are the definition. With fusion asked for (`model.compile_ngpt_ops`)
and CUDA tensors, an op runs as:

- inside a compiled layer (`model.compile_layers`): the eager definition, traced into the layer's
  graph, where inductor fuses it with the neighbouring elementwise work (RoPE, the QKV split and
  the q/k normalization become one kernel). A Triton kernel there would be an opaque call that
  cuts those fusions; `triton_ops` registers its kernels as custom ops, so a graph *can* call
  them, and `bench/bench_ngpt_ops.py` times both choices on a GPU;
- otherwise: the hand-written Triton kernel (`triton_ops`: one kernel per direction, no compile
  time, no recompilation on new shapes) where Triton is installed and the case is supported;
- otherwise: the eager definition under `torch.compile`, compiled on first use.

CPU tensors always run the eager definition. Every path gives the eager numbers up to rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from megatron_ngpt.models import triton_ops


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


def _triton_normalize_qk(
    query: torch.Tensor, key: torch.Tensor, s_qk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_ops.normalize_heads(query, s_qk), triton_ops.normalize_heads(key, s_qk)


def _normalize_qk_supported(query: torch.Tensor, key: torch.Tensor, s_qk: torch.Tensor) -> bool:
    return (triton_ops.supports_normalize_heads(query, s_qk)
            and triton_ops.supports_normalize_heads(key, s_qk))


class FusedOp:
    """An nGPT op with its eager definition, a Triton kernel and a `torch.compile`d fallback.

    `triton` is None where no kernel exists; `supports(*args)` says whether it handles a call.
    The compiled fallback uses static shapes (`dynamic=False`): a training run sees one shape
    per function, and static kernels are the fastest; a new shape costs one recompilation.
    """

    def __init__(self, fn: Callable, triton: Callable | None = None,
                 supports: Callable[..., bool] | None = None) -> None:
        self.eager = fn
        self.triton = triton if triton_ops.HAS_TRITON else None
        self.supports = supports or (lambda *args: False)
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def compiled(self) -> Callable:
        return torch.compile(self.eager, dynamic=False)

    def implementation(self, *args: torch.Tensor, fused: bool = True) -> Callable:
        """The function that runs these arguments (see the module docstring for the order)."""
        if not fused or not args[0].is_cuda or torch.compiler.is_compiling():
            return self.eager
        if self.triton is not None and self.supports(*args):
            return self.triton
        return self.compiled

    def __call__(self, *args: torch.Tensor, fused: bool = True):
        return self.implementation(*args, fused=fused)(*args)


residual_update = FusedOp(_residual_update, triton_ops.residual_update,
                          triton_ops.supports_residual_update)
normalize_qk = FusedOp(_normalize_qk, _triton_normalize_qk, _normalize_qk_supported)
