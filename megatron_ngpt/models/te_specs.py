"""Transformer Engine layer specs, written as data: no Transformer Engine import happens here.

A TE layer is the local layer of `specs.py` with TE modules in a few slots; every other slot
(the layer class, nGPT's residual updates and scaled MLP) is shared. The TE modules are named as
``(module path, class name)`` tuples that megatron-core imports only when it builds the layer,
because importing Transformer Engine without CUDA fails (and breaks `import megatron.core`).

- GPT-2: megatron-core's TE pieces as its own TE spec uses them: the pre-norms are fused into
  `TELayerNormColumnParallelLinear` (QKV and fc1), so the layer's norm slots are identity;
  `TEDotProductAttention` (flash / cuDNN) and `TERowParallelLinear`.
- nGPT: it has no learned pre-norm to fuse, so plain `TEColumnParallelLinear` /
  `TERowParallelLinear` subclasses that keep their weights unit-norm, and `TEDotProductAttention`
  behind nGPT's q/k normalization (see `te_layers.py`).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import torch
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from megatron_ngpt.models.specs import get_gpt2_layer_spec, get_ngpt_layer_spec

MEGATRON_TE = "megatron.core.extensions.transformer_engine"
NGPT_TE = "megatron_ngpt.models.te_layers"

# Local GPT-2 parameter names -> TE names: the pre-norms live inside the fused norm+linear modules.
LOCAL_TO_TE_PREFIXES = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}


def _lazy(module_path: str, name: str) -> ModuleSpec:
    return ModuleSpec(module=(module_path, name))


def _with_modules(
    local: TransformerLayerSubmodules,
    *,
    qkv: ModuleSpec,
    core_attention: ModuleSpec,
    proj: ModuleSpec,
    fc1: ModuleSpec,
    fc2: ModuleSpec,
    **layer_slots,
) -> TransformerLayerSubmodules:
    """`local` with its attention and MLP modules (and any `layer_slots`) replaced."""
    attn, mlp = local.self_attention, local.mlp
    attn = dataclasses.replace(attn, submodules=dataclasses.replace(
        attn.submodules, linear_qkv=qkv, core_attention=core_attention, linear_proj=proj))
    mlp = dataclasses.replace(mlp, submodules=dataclasses.replace(
        mlp.submodules, linear_fc1=fc1, linear_fc2=fc2))
    return dataclasses.replace(local, self_attention=attn, mlp=mlp, **layer_slots)


def gpt2_te_submodules() -> TransformerLayerSubmodules:
    """GPT-2 with TE's fused norm+linear, flash attention and row-parallel linear."""
    norm_linear = _lazy(MEGATRON_TE, "TELayerNormColumnParallelLinear")
    row = _lazy(MEGATRON_TE, "TERowParallelLinear")
    return _with_modules(
        get_gpt2_layer_spec("local").submodules,
        qkv=norm_linear,
        core_attention=_lazy(MEGATRON_TE, "TEDotProductAttention"),
        proj=row,
        fc1=norm_linear,
        fc2=row,
        input_layernorm=IdentityOp,
        pre_mlp_layernorm=IdentityOp,
    )


def ngpt_te_submodules() -> TransformerLayerSubmodules:
    """nGPT with unit-norm TE linears and TE attention behind the q/k normalization."""
    column = _lazy(NGPT_TE, "NormalizedTEColumnParallelLinear")
    row = _lazy(NGPT_TE, "NormalizedTERowParallelLinear")
    return _with_modules(
        get_ngpt_layer_spec("local").submodules,
        qkv=column,
        core_attention=_lazy(NGPT_TE, "NGPTTEDotProductAttention"),
        proj=row,
        fc1=column,
        fc2=row,
    )


def te_param_name(local_name: str) -> str:
    """The TE model's name for a local model's parameter (same weights, TP=1)."""
    for local, te in LOCAL_TO_TE_PREFIXES.items():
        if f".{local}" in f".{local_name}":
            return f".{local_name}".replace(f".{local}", f".{te}", 1)[1:]
    return local_name


def transformer_engine_problem() -> str | None:
    """Why the TE backend cannot be built here, or None when it can."""
    if importlib.util.find_spec("transformer_engine") is None:
        return "Transformer Engine is not installed"
    if not torch.cuda.is_available():
        return "Transformer Engine needs a CUDA GPU and none is available"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as err:  # a broken install raises RuntimeError / OSError, not only ImportError
        return f"importing Transformer Engine failed: {type(err).__name__}: {err}"
    return None


def require_transformer_engine() -> None:
    """Fail clearly before megatron-core builds a TE layer where TE cannot work.

    megatron-core swallows the ImportError of a lazily named module and, without TE, its TE
    classes are mocks; building them would fail later and obscurely, or not at all.
    """
    problem = transformer_engine_problem()
    if problem is not None:
        raise RuntimeError(
            f"model.transformer_impl=transformer_engine: {problem}. On a CUDA machine install it "
            "with `pip install .[gpu]`, or set model.transformer_impl=local."
        )
