"""megatron-core's `TransformerConfig` for this project's models: the one source of truth that
every module reads (shapes, dtypes, init, the layer implementation, nGPT's options).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import init_method_normal, scaled_init_method_normal

from megatron_ngpt.config import ModelConfig
from megatron_ngpt.models.te_support import transformer_engine_problem


@dataclasses.dataclass
class LMTransformerConfig(TransformerConfig):
    """megatron-core's `TransformerConfig` plus the few fields this project's modules read."""

    arch: str = "ngpt"
    vocab_size: int = 0
    rotary_base: int = 10000
    ngpt_scale_u_by_sqrt_d: bool = False
    compile_ngpt_ops: bool = False
    compile_layers: bool = False
    activation_checkpointing: bool = False
    init_seed: int = 1234


def build_transformer_config(
    model: ModelConfig,
    vocab_size: int,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    params_dtype: torch.dtype = torch.float32,
    activation_checkpointing: bool = False,
    init_seed: int = 1234,
) -> LMTransformerConfig:
    """Translate this project's `ModelConfig` into megatron-core's config (the source of truth)."""
    std = model.init_std_value
    is_ngpt = model.arch == "ngpt"
    return LMTransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        ffn_hidden_size=model.ffn_hidden_size,
        kv_channels=model.head_dim,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=True,
        gradient_accumulation_fusion=False,
        add_bias_linear=False,
        gated_linear_unit=True,
        activation_func=F.silu,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        # Transformer Engine's fused RoPE kernel with the TE layers (megatron-core refuses the
        # flag at config time where TE is unusable; the layer build then explains why).
        apply_rope_fusion=(model.transformer_impl == "transformer_engine"
                           and transformer_engine_problem() is None),
        persist_layer_norm=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        normalization=model.normalization,
        layernorm_epsilon=model.layernorm_epsilon,
        init_method=init_method_normal(std),
        # GPT-2 scales its output projections by 1/sqrt(2 L); nGPT normalizes them anyway.
        output_layer_init_method=(
            init_method_normal(std) if is_ngpt
            else scaled_init_method_normal(std, model.num_layers)
        ),
        softmax_scale=math.sqrt(model.head_dim) if is_ngpt else None,
        # Which layer implementation the specs build: megatron-core's own field, read by
        # `specs.layer_spec` (and by megatron-core itself).
        transformer_impl=model.transformer_impl,
        arch=model.arch,
        vocab_size=vocab_size,
        rotary_base=model.rotary_base,
        ngpt_scale_u_by_sqrt_d=model.ngpt_scale_u_by_sqrt_d,
        compile_ngpt_ops=model.compile_ngpt_ops,
        compile_layers=model.compile_layers,
        activation_checkpointing=activation_checkpointing,
        init_seed=init_seed,
    )
