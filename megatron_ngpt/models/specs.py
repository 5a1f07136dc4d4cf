"""Transformer-layer specs: nGPT and its GPT-2 baseline as megatron-core `ModuleSpec`s.

Both are megatron's `TransformerLayer` around `SelfAttention` and `MLP`; they differ only where
the math does (see the nGPT math notes): nGPT has no pre-norms, unit-norm linear layers, q/k
normalization in the core attention, a spherical residual update and a scaled MLP.

`backend="local"` uses megatron-core's own tensor-parallel layers and runs everywhere.
`backend="te"` names Transformer Engine modules; megatron's TE module is imported only then,
since importing it without CUDA fails.
"""

from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_ngpt.models.attention import NGPTCoreAttention, SDPACoreAttention
from megatron_ngpt.models.layers import (
    GroupedRowParallelLinear,
    NormalizedColumnParallelLinear,
    NormalizedRowParallelLinear,
)
from megatron_ngpt.models.ngpt import NGPTMLP, NGPTResidualUpdate, NGPTTransformerLayer

BACKENDS = ("local", "te")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def get_gpt2_layer_spec(backend: str = "local") -> ModuleSpec:
    """Pre-norm GPT-2 layer with SwiGLU and RoPE, no biases (norm type from the config)."""
    _check_backend(backend)
    if backend == "te":
        from megatron_ngpt.models.te_specs import gpt2_te_submodules

        return ModuleSpec(module=TransformerLayer, submodules=gpt2_te_submodules())
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=WrappedTorchNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=SDPACoreAttention,
                    linear_proj=GroupedRowParallelLinear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=WrappedTorchNorm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                         linear_fc2=GroupedRowParallelLinear),
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def get_ngpt_layer_spec(backend: str = "local") -> ModuleSpec:
    """nGPT layer: identity pre-norms, normalized linears, normalized q/k, spherical residuals."""
    _check_backend(backend)
    if backend == "te":
        from megatron_ngpt.models.te_specs import ngpt_te_submodules

        return ModuleSpec(module=NGPTTransformerLayer, submodules=ngpt_te_submodules())
    return ModuleSpec(
        module=NGPTTransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=NormalizedColumnParallelLinear,
                    core_attention=NGPTCoreAttention,
                    linear_proj=NormalizedRowParallelLinear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=ModuleSpec(module=NGPTResidualUpdate),
            pre_mlp_layernorm=IdentityOp,
            mlp=ModuleSpec(
                module=NGPTMLP,
                submodules=MLPSubmodules(linear_fc1=NormalizedColumnParallelLinear,
                                         linear_fc2=NormalizedRowParallelLinear),
            ),
            mlp_bda=ModuleSpec(module=NGPTResidualUpdate),
        ),
    )
