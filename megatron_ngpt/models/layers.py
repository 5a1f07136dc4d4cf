"""Tensor-parallel linear layers whose weights are unit-norm along the embedding dimension.

megatron-core's `ColumnParallelLinear` stores ``[out / TP, d]``: the embedding dimension is the
input, so each *row* is normalized and every TP shard holds whole rows. `RowParallelLinear` stores
``[d, in / TP]``: each *column* lives along ``d`` and every shard holds whole columns. In both
cases TP needs no communication to normalize; ZeRO's flat partitions are handled by the
optimizer through :mod:`megatron_ngpt.models.normalize`.

`GroupedRowParallelLinear` is megatron's `RowParallelLinear` with one fix for `torch.compile`.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from megatron_ngpt.models.normalize import mark_normalized, normalize_matrix_


class GroupedRowParallelLinear(RowParallelLinear):
    """`RowParallelLinear` that hands its own TP group to the matmul.

    megatron-core 0.16's `RowParallelLinear.forward` passes ``tp_group=None`` to the linear
    autograd function, which then looks the default group up and issues a `DeprecationWarning`
    on every call. `torch.compile` cannot trace `warnings.warn`, so every layer broke into
    several graphs there. The group is the one megatron would have looked up; the numbers are
    the same.
    """

    def _forward_impl(self, input, weight, *args, **kwargs):
        if kwargs.get("tp_group") is None:
            kwargs["tp_group"] = self.tp_group
        return super()._forward_impl(input, weight, *args, **kwargs)


class UnitNormWeight:
    """Mixin for a linear layer: after its own init, mark and normalize its weight along
    `norm_dim` (used by the local layers here and the Transformer Engine ones)."""

    norm_dim: int

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        mark_normalized(self.weight, self.norm_dim)
        normalize_matrix_(self.weight.data, self.norm_dim)


class NormalizedColumnParallelLinear(UnitNormWeight, ColumnParallelLinear):
    """`ColumnParallelLinear` with unit-norm rows (W_q/k/v, W_u/v, the LM head)."""

    norm_dim = 1


class NormalizedRowParallelLinear(UnitNormWeight, GroupedRowParallelLinear):
    """`RowParallelLinear` with unit-norm columns (W_o, W_down)."""

    norm_dim = 0


class ScaledLMHead(NormalizedColumnParallelLinear):
    """nGPT's LM head: unit-norm rows, each vocabulary logit scaled by `s_z`.

    ``(h W^T) * s_z = h (s_z * W)^T``: scaling the ``[V / TP, d]`` weight costs ``V d``, scaling
    the logits costs ``tokens x V`` and keeps a logits-sized tensor for the backward pass.
    """

    def forward(self, input_: torch.Tensor, scale: torch.Tensor):
        dtype = torch.promote_types(self.weight.dtype, torch.float32)  # one rounding in bf16
        weight = (self.weight.to(dtype) * scale.to(dtype).unsqueeze(-1)).to(self.weight.dtype)
        return super().forward(input_, weight=weight)
