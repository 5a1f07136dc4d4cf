"""The megatron-core models compute exactly the math of the plain-torch reference (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_ngpt.models.language_model import LanguageModel, language_model_loss
from megatron_ngpt.models.transformer_config import build_transformer_config
from tests.models.reference import RefConfig, Weights, gpt2_forward, ngpt_forward
from tests.tiny import tiny_config

VOCAB = 256


def _split_qkv(weight: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """megatron's fused QKV rows are per head ``[q_i; k_i; v_i]``."""
    per_head = weight.view(heads, 3, -1, weight.shape[-1])
    return tuple(per_head[:, j].reshape(-1, weight.shape[-1]) for j in range(3))


def reference_weights(model: LanguageModel, arch: str, heads: int) -> Weights:
    """Our parameters in the reference's layout, scaling vectors at their effective values."""
    p = {name: t.detach() for name, t in model.named_parameters()}
    d = model.config.hidden_size
    sqrt_d = math.sqrt(d)  # init_value / init_scaling for s_qk and s_z; 0.05 sqrt(d) for alpha
    w: Weights = {"wte": p["embedding.word_embeddings.weight"],
                  "w_lm": p["head.output_layer.weight"]}
    for i in range(model.config.num_layers):
        src, dst = f"layers.{i}.layer.", f"h{i}."
        w[dst + "wq"], w[dst + "wk"], w[dst + "wv"] = _split_qkv(
            p[src + "self_attention.linear_qkv.weight"], heads)
        w[dst + "wo"] = p[src + "self_attention.linear_proj.weight"]
        w_gate, w_up = p[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        w[dst + "w_down"] = p[src + "mlp.linear_fc2.weight"]
        if arch == "ngpt":
            w[dst + "w_v"], w[dst + "w_u"] = w_gate, w_up
            w[dst + "s_qk"] = p[src + "self_attention.core_attention.s_qk.weight"] * sqrt_d
            w[dst + "alpha_a"] = p[src + "self_attn_bda.alpha.weight"] * 0.05 * sqrt_d
            w[dst + "alpha_m"] = p[src + "mlp_bda.alpha.weight"] * 0.05 * sqrt_d
            w[dst + "s_u"] = p[src + "mlp.s_u.weight"]
            w[dst + "s_v"] = p[src + "mlp.s_v.weight"]
        else:
            w[dst + "w_gate"], w[dst + "w_up"] = w_gate, w_up
            for ours, theirs in (("input_layernorm", "ln1"), ("pre_mlp_layernorm", "ln2")):
                for kind in ("weight", "bias"):
                    if f"{src}{ours}.{kind}" in p:
                        w[f"{dst}{theirs}.{kind}"] = p[f"{src}{ours}.{kind}"]
    if arch == "ngpt":
        w["s_z"] = p["head.s_z.weight"] * sqrt_d
    else:
        w["ln_f.weight"] = p["head.final_norm.weight"]
        if "head.final_norm.bias" in p:
            w["ln_f.bias"] = p["head.final_norm.bias"]
    return w


@torch.no_grad()
def _perturb_vectors_(model: LanguageModel) -> None:
    """Move every 1-D parameter (scales, norms) away from its init so that each one matters."""
    for param in model.parameters():
        if param.dim() == 1:
            param.mul_(1 + 0.5 * torch.randn_like(param)).add_(0.05 * torch.randn_like(param))


@pytest.mark.parametrize("arch,normalization", [
    ("ngpt", "RMSNorm"), ("gpt2", "RMSNorm"), ("gpt2", "LayerNorm"),
])
def test_logits_and_loss_match_reference(single_rank, arch: str, normalization: str) -> None:
    cfg = tiny_config(arch, f"model.normalization={normalization}").model
    torch.manual_seed(0)
    model = LanguageModel(build_transformer_config(cfg, VOCAB, params_dtype=torch.float64))
    model = model.double().eval()
    _perturb_vectors_(model)
    tokens = torch.randint(0, VOCAB, (2, 16))
    labels = torch.randint(0, VOCAB, (2, 16))

    ref_cfg = RefConfig(cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads,
                        cfg.rotary_base, normalization, cfg.layernorm_epsilon)
    forward = ngpt_forward if arch == "ngpt" else gpt2_forward
    expected = forward(reference_weights(model, arch, cfg.num_attention_heads), tokens, ref_cfg)

    with torch.no_grad():
        logits = model(tokens)
        loss = language_model_loss(logits.clone(), labels)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-10)
    # megatron's vocab-parallel cross entropy runs in float32 whatever the logits' dtype.
    ref_loss = F.cross_entropy(expected.reshape(-1, VOCAB), labels.reshape(-1))
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=0)
