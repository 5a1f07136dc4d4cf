"""Transformer-layer specs: nGPT and its GPT-2 baseline as megatron-core `ModuleSpec`s.

Both are megatron's `TransformerLayer` around `SelfAttention` and `MLP`; they differ only where
the math does (docs/ngpt-math.md): nGPT has no pre-norms, unit-norm linear layers, q/k
normalization in the core attention, a spherical residual update and a scaled MLP.

Each model has a local spec (megatron-core's own tensor-parallel layers, runs everywhere) and a
Transformer Engine spec, side by side. A TE spec is the local one with TE modules in a few slots;
the TE modules are named as ``(module path, class name)`` tuples that megatron-core imports only
when it builds the layer, because importing Transformer Engine without CUDA fails. Which one is
built is `TransformerConfig.transformer_impl` (`layer_spec`), as in megatron-core.

- GPT-2 on TE: the pre-norms fused into `TELayerNormColumnParallelLinear` (QKV and fc1), so the
  layer's norm slots are identity; `TEDotProductAttention` (flash / cuDNN); `TERowParallelLinear`.
- nGPT on TE: no learned pre-norm to fuse, so `TEColumnParallelLinear` / `TERowParallelLinear`
  subclasses that keep their weights unit-norm, and `TEDotProductAttention` behind nGPT's q/k
  normalization (`te_layers.py`).
"""

from __future__ import annotations

import dataclasses

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_ngpt.models.attention import NGPTCoreAttention, SDPACoreAttention
from megatron_ngpt.models.layers import (
    GroupedRowParallelLinear,
    NormalizedColumnParallelLinear,
    NormalizedRowParallelLinear,
)
from megatron_ngpt.models.ngpt import NGPTMLP, NGPTResidualUpdate, NGPTTransformerLayer

LOCAL, TE = "local", "transformer_engine"  # the values of TransformerConfig.transformer_impl
MEGATRON_TE = "megatron.core.extensions.transformer_engine"
NGPT_TE = "megatron_ngpt.models.te_layers"

# Local GPT-2 parameter names -> TE names: the pre-norms live inside the fused norm+linear modules.
LOCAL_TO_TE_PREFIXES = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}


def _check_impl(transformer_impl: str) -> None:
    if transformer_impl not in (LOCAL, TE):
        raise ValueError(f"transformer_impl must be {LOCAL!r} or {TE!r}, got {transformer_impl!r}")


def _lazy(module_path: str, name: str) -> ModuleSpec:
    return ModuleSpec(module=(module_path, name))


def _with_modules(local: TransformerLayerSubmodules, *, qkv: ModuleSpec,
                  core_attention: ModuleSpec, proj: ModuleSpec, fc1: ModuleSpec,
                  fc2: ModuleSpec, **layer_slots) -> TransformerLayerSubmodules:
    """`local` with its attention and MLP modules (and any `layer_slots`) replaced."""
    attn, mlp = local.self_attention, local.mlp
    attn = dataclasses.replace(attn, submodules=dataclasses.replace(
        attn.submodules, linear_qkv=qkv, core_attention=core_attention, linear_proj=proj))
    mlp = dataclasses.replace(mlp, submodules=dataclasses.replace(
        mlp.submodules, linear_fc1=fc1, linear_fc2=fc2))
    return dataclasses.replace(local, self_attention=attn, mlp=mlp, **layer_slots)


def _gpt2_local() -> TransformerLayerSubmodules:
    return TransformerLayerSubmodules(
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
    )


def _gpt2_te() -> TransformerLayerSubmodules:
    norm_linear = _lazy(MEGATRON_TE, "TELayerNormColumnParallelLinear")
    row = _lazy(MEGATRON_TE, "TERowParallelLinear")
    return _with_modules(
        _gpt2_local(), qkv=norm_linear, core_attention=_lazy(MEGATRON_TE, "TEDotProductAttention"),
        proj=row, fc1=norm_linear, fc2=row,
        input_layernorm=IdentityOp, pre_mlp_layernorm=IdentityOp,
    )


def _ngpt_local() -> TransformerLayerSubmodules:
    return TransformerLayerSubmodules(
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
    )


def _ngpt_te() -> TransformerLayerSubmodules:
    column = _lazy(NGPT_TE, "NormalizedTEColumnParallelLinear")
    row = _lazy(NGPT_TE, "NormalizedTERowParallelLinear")
    return _with_modules(
        _ngpt_local(), qkv=column, core_attention=_lazy(NGPT_TE, "NGPTTEDotProductAttention"),
        proj=row, fc1=column, fc2=row,
    )


def get_gpt2_layer_spec(transformer_impl: str = LOCAL) -> ModuleSpec:
    """Pre-norm GPT-2 layer with SwiGLU and RoPE, no biases (norm type from the config)."""
    _check_impl(transformer_impl)
    submodules = _gpt2_local() if transformer_impl == LOCAL else _gpt2_te()
    return ModuleSpec(module=TransformerLayer, submodules=submodules)


def get_ngpt_layer_spec(transformer_impl: str = LOCAL) -> ModuleSpec:
    """nGPT layer: identity pre-norms, normalized linears, normalized q/k, spherical residuals."""
    _check_impl(transformer_impl)
    submodules = _ngpt_local() if transformer_impl == LOCAL else _ngpt_te()
    return ModuleSpec(module=NGPTTransformerLayer, submodules=submodules)


def layer_spec(config: TransformerConfig) -> ModuleSpec:
    """The spec of `config.arch` for `config.transformer_impl`."""
    spec = get_ngpt_layer_spec if config.arch == "ngpt" else get_gpt2_layer_spec
    return spec(config.transformer_impl)


def te_param_name(local_name: str) -> str:
    """The TE model's name for a local model's parameter (same weights, TP=1)."""
    for local, te in LOCAL_TO_TE_PREFIXES.items():
        if f".{local}" in f".{local_name}":
            return f".{local_name}".replace(f".{local}", f".{te}", 1)[1:]
    return local_name
