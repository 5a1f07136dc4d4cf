"""The Transformer Engine specs name the intended TE modules, without importing TE."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from megatron.core.transformer.identity_op import IdentityOp

import megatron_ngpt.models.te_support as te_support
from megatron_ngpt.config import ModelConfig
from megatron_ngpt.models.language_model import TransformerLayerStage
from megatron_ngpt.models.ngpt import NGPTTransformerLayer
from megatron_ngpt.models.specs import (
    LOCAL,
    MEGATRON_TE,
    NGPT_TE,
    TE,
    get_gpt2_layer_spec,
    get_ngpt_layer_spec,
    layer_spec,
    te_param_name,
)
from megatron_ngpt.models.transformer_config import build_transformer_config


def _modules(sub) -> dict[str, object]:
    """The backend-specific slots of a layer: what each one builds."""
    attn, mlp = sub.self_attention.submodules, sub.mlp.submodules
    return {
        "linear_qkv": attn.linear_qkv.module,
        "core_attention": attn.core_attention.module,
        "linear_proj": attn.linear_proj.module,
        "linear_fc1": mlp.linear_fc1.module,
        "linear_fc2": mlp.linear_fc2.module,
    }


def test_gpt2_te_spec_uses_megatron_te_modules_with_fused_norms():
    sub = get_gpt2_layer_spec(TE).submodules
    assert _modules(sub) == {
        "linear_qkv": (MEGATRON_TE, "TELayerNormColumnParallelLinear"),
        "core_attention": (MEGATRON_TE, "TEDotProductAttention"),
        "linear_proj": (MEGATRON_TE, "TERowParallelLinear"),
        "linear_fc1": (MEGATRON_TE, "TELayerNormColumnParallelLinear"),
        "linear_fc2": (MEGATRON_TE, "TERowParallelLinear"),
    }
    # The pre-norms are inside the fused norm + linear modules.
    assert sub.input_layernorm is IdentityOp and sub.pre_mlp_layernorm is IdentityOp
    local = get_gpt2_layer_spec(LOCAL).submodules
    assert sub.self_attn_bda is local.self_attn_bda and sub.mlp.module is local.mlp.module


def test_ngpt_te_spec_changes_only_the_matmuls_and_attention_kernel():
    sub = get_ngpt_layer_spec(TE).submodules
    assert _modules(sub) == {
        "linear_qkv": (NGPT_TE, "NormalizedTEColumnParallelLinear"),
        "core_attention": (NGPT_TE, "NGPTTEDotProductAttention"),
        "linear_proj": (NGPT_TE, "NormalizedTERowParallelLinear"),
        "linear_fc1": (NGPT_TE, "NormalizedTEColumnParallelLinear"),
        "linear_fc2": (NGPT_TE, "NormalizedTERowParallelLinear"),
    }
    local = get_ngpt_layer_spec(LOCAL).submodules
    for slot in ("input_layernorm", "pre_mlp_layernorm", "self_attn_bda", "mlp_bda"):
        assert getattr(sub, slot) == getattr(local, slot), slot
    assert sub.mlp.module is local.mlp.module
    assert sub.self_attention.params == local.self_attention.params
    assert get_ngpt_layer_spec(TE).module is NGPTTransformerLayer


def test_lazily_named_classes_exist():
    """Every (module, class) a TE spec names is defined there (read from source, not imported)."""
    named = {*_modules(get_gpt2_layer_spec(TE).submodules).values(),
             *_modules(get_ngpt_layer_spec(TE).submodules).values()}
    for module_path, name in named:
        source = Path(importlib.util.find_spec(module_path).origin).read_text()
        classes = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)}
        assert name in classes, f"{module_path} defines no {name}"


def test_te_parameter_names_of_fused_norms():
    assert te_param_name("layers.3.layer.input_layernorm.weight") == (
        "layers.3.layer.self_attention.linear_qkv.layer_norm_weight")
    assert te_param_name("layers.0.layer.pre_mlp_layernorm.bias") == (
        "layers.0.layer.mlp.linear_fc1.layer_norm_bias")
    assert te_param_name("head.final_norm.weight") == "head.final_norm.weight"
    assert te_param_name("layers.0.layer.mlp.linear_fc1.weight") == (
        "layers.0.layer.mlp.linear_fc1.weight")


@pytest.mark.parametrize("arch", ["ngpt", "gpt2"])
@pytest.mark.parametrize("impl", [LOCAL, TE])
def test_transformer_config_carries_the_implementation_the_spec_uses(arch, impl):
    """megatron-core's own `transformer_impl` field is the one switch (no separate backend)."""
    model = ModelConfig(arch=arch, num_layers=1, hidden_size=64, num_attention_heads=4,
                        ffn_hidden_size=128, transformer_impl=impl)
    config = build_transformer_config(model, vocab_size=256)
    assert config.transformer_impl == impl
    expected = (get_ngpt_layer_spec if arch == "ngpt" else get_gpt2_layer_spec)(impl)
    assert layer_spec(config) == expected
    assert layer_spec(config) != (get_ngpt_layer_spec if arch == "ngpt" else get_gpt2_layer_spec)(
        TE if impl == LOCAL else LOCAL)


@pytest.fixture
def no_transformer_engine(monkeypatch):
    find_spec = importlib.util.find_spec

    def without_te(name, *args):
        return None if name == "transformer_engine" else find_spec(name, *args)

    monkeypatch.setattr(te_support.importlib.util, "find_spec", without_te)


def test_selecting_te_without_it_fails_clearly(no_transformer_engine):
    model = ModelConfig(arch="ngpt", num_layers=1, hidden_size=64, num_attention_heads=4,
                        ffn_hidden_size=128, transformer_impl="transformer_engine")
    config = build_transformer_config(model, vocab_size=256)
    assert not config.apply_rope_fusion  # TE's fused RoPE only where TE works
    for arch in ("ngpt", "gpt2"):
        config.arch = arch
        with pytest.raises(RuntimeError) as err:
            TransformerLayerStage(config, 1)
        message = str(err.value)
        assert "model.transformer_impl" in message and "pip install .[gpu]" in message
        assert "not installed" in message
