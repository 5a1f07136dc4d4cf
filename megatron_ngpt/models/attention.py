"""Core attention on `torch.nn.functional.scaled_dot_product_attention` (flash / fused on GPU).

`SDPACoreAttention` is the GPT-2 core attention; `NGPTCoreAttention` first puts every query and
key head on the unit sphere and scales it by `s_qk`, then uses softmax scale ``sqrt(d_head)``
(megatron passes `config.softmax_scale`, which the nGPT config sets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_ngpt.models.fused import normalize_qk
from megatron_ngpt.models.scaling import ScalingVector


class SDPACoreAttention(MegatronModule):
    """Causal self-attention over megatron's ``[s, b, heads, d_head]`` tensors; with an
    `attention_mask` (a `documents.DocumentMask`), causal within each packed document."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type=None,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        self.layer_number = layer_number
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

    def prepare_query_key(
        self, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return query, key

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None) -> torch.Tensor:
        query, key = self.prepare_query_key(query, key)
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        gqa = k.shape[1] != q.shape[1]
        if attention_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                 scale=self.softmax_scale, enable_gqa=gqa)
        else:  # a DocumentMask (documents.py): causal within each document of the sequence
            out = attention_mask.attend(q, k, v, scale=self.softmax_scale, enable_gqa=gqa)
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)


class NGPTCoreAttention(SDPACoreAttention):
    """nGPT attention: q, k normalized per head and scaled by `s_qk` after RoPE."""

    def __init__(self, config: TransformerConfig, layer_number: int, **kwargs) -> None:
        super().__init__(config, layer_number, **kwargs)
        self.s_qk = qk_scaling_vector(config)

    def prepare_query_key(self, query, key):
        return normalize_qk(query, key, self.s_qk(), fused=compile_ngpt_ops(self.config))


def qk_scaling_vector(config: TransformerConfig) -> ScalingVector:
    """`s_qk`: one scale per head dimension of every head, sharded over TP like the heads."""
    return ScalingVector(
        config,
        config.num_attention_heads * config.kv_channels,
        kind="s_qk",
        tensor_parallel=True,
    )


def compile_ngpt_ops(config: TransformerConfig) -> bool:
    """Whether nGPT's normalizations run fused on GPU: Triton kernels or `torch.compile`
    (`model.compile_ngpt_ops`; see `fused.py`)."""
    return getattr(config, "compile_ngpt_ops", False)
