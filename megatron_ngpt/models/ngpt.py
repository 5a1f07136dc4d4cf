"""The modules where nGPT's layer differs from GPT-2's: residual update and scaled MLP.

Everything else (QKV, RoPE, output projection, the layer's control flow) is megatron-core's
`SelfAttention` / `TransformerLayer` with the normalized linear layers of `layers.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.identity_op import IdentityFuncOp
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_ngpt.models.attention import compile_ngpt_ops
from megatron_ngpt.models.fused import residual_update
from megatron_ngpt.models.scaling import ScalingVector


class _NGPTMLPIsKnown(logging.Filter):
    """megatron's `TransformerLayer` warns once per layer about any MLP class other than its own;
    `NGPTMLP` is an `MLP` and fills in megatron-core's tensor-parallel group itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unknown MLP type")


logging.getLogger("megatron.core.transformer.transformer_layer").addFilter(_NGPTMLPIsKnown())


class NGPTResidualUpdate(MegatronModule):
    """``h <- norm(h + |alpha| * (norm(x) - h))``: nGPT's spherical step toward the block output.

    It fills megatron's bias-dropout-add slot: `forward(training, fused)` returns the function
    ``(x_with_bias, residual, dropout_prob) -> h`` that `TransformerLayer` calls.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config=config)
        self.alpha = ScalingVector(config, config.hidden_size, kind="alpha",
                                   tensor_parallel=False)

    def forward(self, training: bool, fused: bool):
        return self.update

    def update(self, x_with_bias, residual: torch.Tensor, prob: float = 0.0) -> torch.Tensor:
        x, bias = x_with_bias
        if bias is not None:
            x = x + bias
        return residual_update(residual, x, self.alpha(), fused=compile_ngpt_ops(self.config))


class NGPTMLP(MLP):
    """SwiGLU with nGPT's scales: ``(s_u * hW_u) * silu(s_v * sqrt(d) * hW_v)``, then W_down.

    megatron's fused fc1 computes ``[gate | up]`` per TP shard; the gate (SiLU input) is `v`.
    """

    def __init__(self, config: TransformerConfig, submodules, **kwargs) -> None:
        # megatron passes its TP group only to its own MLP class; without it every forward
        # warns (and breaks torch.compile graphs), so take megatron-core's group here.
        kwargs.setdefault("tp_group",
                          parallel_state.get_tensor_model_parallel_group(check_initialized=False))
        super().__init__(config, submodules, **kwargs)
        ffn = config.ffn_hidden_size
        self.s_u = ScalingVector(config, ffn, kind="s_uv", tensor_parallel=True)
        self.s_v = ScalingVector(config, ffn, kind="s_uv", tensor_parallel=True)
        self.v_multiplier = math.sqrt(config.hidden_size)
        scale_u = getattr(config, "ngpt_scale_u_by_sqrt_d", False)
        self.u_multiplier = self.v_multiplier if scale_u else 1.0

    def forward(self, hidden_states: torch.Tensor, per_token_scale=None, **kwargs):
        fc1_out, _ = self.linear_fc1(hidden_states)
        v, u = torch.chunk(fc1_out, 2, dim=-1)
        u = u * (self.s_u() * self.u_multiplier).to(u.dtype)
        v = v * (self.s_v() * self.v_multiplier).to(v.dtype)
        return self.linear_fc2(u * F.silu(v))


class NGPTTransformerLayer(TransformerLayer):
    """`TransformerLayer` whose residual slots are modules built with the config.

    megatron builds the bias-dropout-add slots without arguments (they are plain functions for
    GPT); nGPT's hold the learnable `alpha_A` / `alpha_M`, so they are built here with the config.
    """

    def __init__(self, config: TransformerConfig, submodules, *args, **kwargs) -> None:
        plain = dataclasses.replace(
            submodules, self_attn_bda=IdentityFuncOp, mlp_bda=IdentityFuncOp
        )
        super().__init__(config, plain, *args, **kwargs)
        self.self_attn_bda = build_module(submodules.self_attn_bda, config=config)
        self.mlp_bda = build_module(submodules.mlp_bda, config=config)
