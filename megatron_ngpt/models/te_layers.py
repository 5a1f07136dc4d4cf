"""nGPT's modules on Transformer Engine. Imported only when megatron-core builds a TE nGPT layer.

They mirror the local ones: the linears keep unit-norm weights exactly as `layers.py` does (TE
stores ``[out, in]`` like megatron-core, so column-parallel rows and row-parallel columns are
whole on every TP rank), and the attention normalizes q and k as `NGPTCoreAttention` does before
TE's flash / cuDNN kernel runs with softmax scale ``sqrt(d_head)`` (`config.softmax_scale`).
"""

from __future__ import annotations

from megatron.core.extensions.transformer_engine import (
    TEColumnParallelLinear,
    TEDotProductAttention,
    TERowParallelLinear,
)
from megatron.core.utils import is_te_min_version

from megatron_ngpt.models.attention import compile_ngpt_ops, qk_scaling_vector
from megatron_ngpt.models.fused import normalize_qk
from megatron_ngpt.models.layers import UnitNormWeight


class NormalizedTEColumnParallelLinear(UnitNormWeight, TEColumnParallelLinear):
    """`TEColumnParallelLinear` with unit-norm rows (W_q/k/v, W_u/v)."""

    norm_dim = 1


class NormalizedTERowParallelLinear(UnitNormWeight, TERowParallelLinear):
    """`TERowParallelLinear` with unit-norm columns (W_o, W_down)."""

    norm_dim = 0


class NGPTTEDotProductAttention(TEDotProductAttention):
    """`TEDotProductAttention` on per-head unit q, k scaled by `s_qk` (after RoPE)."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs) -> None:
        if not is_te_min_version("1.10.0"):
            # Older TE ignores the softmax scale megatron passes and would use 1 / sqrt(d_head).
            raise RuntimeError("nGPT on Transformer Engine needs transformer-engine >= 1.10")
        super().__init__(config, layer_number, attn_mask_type, attention_type, **kwargs)
        self.s_qk = qk_scaling_vector(config)

    def forward(self, query, key, value, *args, **kwargs):
        query, key = normalize_qk(query, key, self.s_qk(), fused=compile_ngpt_ops(self.config))
        return super().forward(query, key, value, *args, **kwargs)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """TE's own entries plus `s_qk` (megatron's TE attention only saves its softmax offset)."""
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        state.update(self.s_qk.sharded_state_dict(f"{prefix}s_qk.", sharded_offsets, metadata))
        return state
