"""`LanguageModel` parameter names (TP=1) -> Hugging Face names, for export.

Two layouts differ: megatron fuses q, k, v per head (rows ``[q_i; k_i; v_i]`` for head i) and
the SwiGLU input (rows ``[gate; up]``, the gate being nGPT's `v`); Hugging Face keeps each matrix
apart. nGPT's scaling vectors are stored as ``stored`` and used as ``stored * multiplier`` (see
`megatron_ngpt.models.scaling`); the export writes the product, the *effective* value that
multiplies the activations. The matrices are copied as they are (already unit-norm).
"""

from __future__ import annotations

import torch

from megatron_ngpt.config import ModelConfig
from megatron_ngpt.models.scaling import scaling_multiplier

Tensor = torch.Tensor


class StateDictError(ValueError):
    """The state dict is not a TP=1 `LanguageModel` state dict of the configured shape."""


# LanguageModel name suffix -> kind of scaling vector (see `models/scaling.py`).
_NGPT_SCALE_KINDS = {
    "self_attention.core_attention.s_qk.weight": "s_qk",
    "self_attn_bda.alpha.weight": "alpha",
    "mlp.s_u.weight": "s_uv",
    "mlp.s_v.weight": "s_uv",
    "mlp_bda.alpha.weight": "alpha",
    "head.s_z.weight": "s_z",
}


def ngpt_scale_multipliers(model: ModelConfig) -> dict[str, float]:
    """stored -> effective factor (``init_value / init_scaling``) per LanguageModel name suffix."""
    return {name: scaling_multiplier(kind, model.hidden_size)
            for name, kind in _NGPT_SCALE_KINDS.items()}


# LanguageModel layer suffix -> NGPTForCausalLM layer suffix, for the scaling vectors.
_NGPT_LAYER_SCALES = {
    "self_attention.core_attention.s_qk.weight": "self_attn.s_qk",
    "self_attn_bda.alpha.weight": "attn_alpha",
    "mlp.s_u.weight": "mlp.s_u",
    "mlp.s_v.weight": "mlp.s_v",
    "mlp_bda.alpha.weight": "mlp_alpha",
}
# LanguageModel layer norm -> Llama / StableLM layer norm (GPT-2 only).
_GPT2_LAYER_NORMS = {"input_layernorm": "input_layernorm",
                     "pre_mlp_layernorm": "post_attention_layernorm"}


def split_qkv(weight: Tensor, num_heads: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """megatron's fused ``[H * 3 * d_h, d]`` (per head: q, k, v) -> q, k, v ``[H * d_h, d]``."""
    if weight.shape[0] != 3 * num_heads * head_dim:
        raise StateDictError(f"fused QKV weight has {weight.shape[0]} rows, expected "
                             f"3 x {num_heads} heads x {head_dim}; is this a TP=1 state dict?")
    per_head = weight.view(num_heads, 3, head_dim, weight.shape[1])
    q, k, v = (per_head[:, i].reshape(num_heads * head_dim, -1) for i in range(3))
    return q, k, v


class _Source:
    """The input state dict; every parameter must be taken exactly once."""

    def __init__(self, state_dict: dict[str, Tensor]) -> None:
        self.params = {k: v for k, v in state_dict.items() if not k.endswith("._extra_state")}

    def take(self, name: str) -> Tensor:
        if name not in self.params:
            raise StateDictError(f"the state dict has no {name!r} (expected the parameter names "
                                 "of a TP=1 LanguageModel of the configured architecture)")
        return self.params.pop(name)

    def check_consumed(self) -> None:
        if self.params:
            extra = ", ".join(sorted(self.params)[:5])
            raise StateDictError(f"{len(self.params)} unexpected parameters in the state dict "
                                 f"(e.g. {extra}); does the config match the checkpoint?")


def to_hf_state_dict(state_dict: dict[str, Tensor], model: ModelConfig) -> dict[str, Tensor]:
    """Hugging Face state dict: Llama/StableLM names for GPT-2, `NGPTForCausalLM` for nGPT."""
    src = _Source(state_dict)
    is_ngpt = model.arch == "ngpt"
    multipliers = ngpt_scale_multipliers(model)
    norm_params = ("weight", "bias") if model.normalization == "LayerNorm" else ("weight",)
    out = {"model.embed_tokens.weight": src.take("embedding.word_embeddings.weight")}
    for i in range(model.num_layers):
        s, h = f"layers.{i}.layer.", f"model.layers.{i}."
        q, k, v = split_qkv(src.take(s + "self_attention.linear_qkv.weight"),
                            model.num_attention_heads, model.head_dim)
        out[h + "self_attn.q_proj.weight"] = q
        out[h + "self_attn.k_proj.weight"] = k
        out[h + "self_attn.v_proj.weight"] = v
        out[h + "self_attn.o_proj.weight"] = src.take(s + "self_attention.linear_proj.weight")
        gate, up = src.take(s + "mlp.linear_fc1.weight").chunk(2, dim=0)
        out[h + "mlp.gate_proj.weight"] = gate
        out[h + "mlp.up_proj.weight"] = up
        out[h + "mlp.down_proj.weight"] = src.take(s + "mlp.linear_fc2.weight")
        if is_ngpt:
            for ours, theirs in _NGPT_LAYER_SCALES.items():
                out[h + theirs] = src.take(s + ours).float() * multipliers[ours]
        else:
            for ours, theirs in _GPT2_LAYER_NORMS.items():
                for p in norm_params:
                    out[f"{h}{theirs}.{p}"] = src.take(f"{s}{ours}.{p}")
    if is_ngpt:
        out["s_z"] = src.take("head.s_z.weight").float() * multipliers["head.s_z.weight"]
    else:
        for p in norm_params:
            out[f"model.norm.{p}"] = src.take(f"head.final_norm.{p}")
    out["lm_head.weight"] = src.take("head.output_layer.weight")
    src.check_consumed()
    return {name: t.detach().contiguous() for name, t in out.items()}
