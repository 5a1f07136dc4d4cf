"""nGPT for Hugging Face transformers: the whole forward pass in plain torch.

Self-contained (the export copies it next to the weights; it imports only torch, transformers and
its configuration), so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
loads an exported model anywhere.

Every matrix is stored already unit-norm along the embedding dimension, and every scaling vector
holds its *effective* value (what multiplies the activations), so the math below reads like the
paper: ``norm(x) = x / ||x||``; per layer

    q, k = s_qk * norm(rope(h W_q)), s_qk * norm(rope(h W_k))   (per head; softmax scale sqrt(d_h))
    h = norm(h + |alpha_A| * (norm(attn W_o) - h))
    u, v = s_u * (h W_u), s_v * sqrt(d) * (h W_v)
    h = norm(h + |alpha_M| * (norm((u * silu(v)) W_down) - h))

and ``logits = s_z * (h W_lm^T)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_ngpt import NGPTConfig


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 over the last dimension, accumulated in float32."""
    acc = x.float()
    return (acc * acc.square().sum(-1, keepdim=True).clamp_min(1e-30).rsqrt()).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(position_ids: torch.Tensor, head_dim: int, base: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE cos/sin ``[b, 1, s, head_dim]`` in float32, half-split layout (Llama's rotate_half).

    Computed per call (a few hundred values) rather than kept as a buffer, so a model built on
    the meta device by from_pretrained needs nothing re-initialized.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device)
    inv_freq = 1.0 / (base ** (exponents / head_dim))
    angles = position_ids[..., None].float() * inv_freq
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)
    return angles.cos(), angles.sin()


class NGPTAttention(nn.Module):
    def __init__(self, config: NGPTConfig, layer_idx: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)
        self.s_qk = nn.Parameter(torch.ones(self.heads * self.head_dim))

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, cache: Cache | None) -> torch.Tensor:
        b, s, _ = h.shape
        q, k, v = (proj(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = rope
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(q.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(k.dtype)
        s_qk = self.s_qk.view(self.heads, 1, self.head_dim).to(q.dtype)
        q, k = unit_norm(q) * s_qk, unit_norm(k) * s_qk
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and s > 1,
            scale=math.sqrt(self.head_dim),
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class NGPTMLP(nn.Module):
    def __init__(self, config: NGPTConfig) -> None:
        super().__init__()
        d, ffn = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, ffn, bias=False)  # W_v: its output goes through SiLU
        self.up_proj = nn.Linear(d, ffn, bias=False)  # W_u
        self.down_proj = nn.Linear(ffn, d, bias=False)
        self.s_u = nn.Parameter(torch.ones(ffn))
        self.s_v = nn.Parameter(torch.ones(ffn))
        self.v_multiplier = math.sqrt(d)
        self.u_multiplier = math.sqrt(d) if config.scale_u_by_sqrt_d else 1.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = self.up_proj(h) * (self.s_u * self.u_multiplier).to(h.dtype)
        v = self.gate_proj(h) * (self.s_v * self.v_multiplier).to(h.dtype)
        return self.down_proj(u * F.silu(v))


class NGPTBlock(nn.Module):
    """One layer: two spherical steps, toward the attention output, then the MLP output."""

    def __init__(self, config: NGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = NGPTAttention(config, layer_idx)
        self.mlp = NGPTMLP(config)
        self.attn_alpha = nn.Parameter(torch.full((config.hidden_size,), 0.05))
        self.mlp_alpha = nn.Parameter(torch.full((config.hidden_size,), 0.05))

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, cache: Cache | None) -> torch.Tensor:
        h_a = self.self_attn(h, rope, mask, cache)
        h = unit_norm(h + self.attn_alpha.abs().to(h.dtype) * (unit_norm(h_a) - h))
        h_m = self.mlp(h)
        return unit_norm(h + self.mlp_alpha.abs().to(h.dtype) * (unit_norm(h_m) - h))


class NGPTPreTrainedModel(PreTrainedModel):
    """Weights come from an export; a model built from a config gets transformers' default init
    (not unit-norm), which is enough for shape checks but is not a trained-from-scratch nGPT."""

    config_class = NGPTConfig
    base_model_prefix = "model"
    _no_split_modules = ["NGPTBlock"]
    supports_gradient_checkpointing = False


def attention_mask_4d(padding_mask: torch.Tensor, query_len: int) -> torch.Tensor:
    """Boolean ``[b, 1, q, kv]`` mask: causal, no padded keys, and each query sees itself.

    `padding_mask` is the 2-D ``[b, kv]`` mask of generate() (1 for real tokens). Letting every
    query see its own position keeps fully padded rows from producing NaN.
    """
    kv_len = padding_mask.shape[1]
    query_pos = torch.arange(kv_len - query_len, kv_len, device=padding_mask.device)[:, None]
    key_pos = torch.arange(kv_len, device=padding_mask.device)[None, :]
    mask = (key_pos <= query_pos) & padding_mask[:, None, None, :].bool()
    return mask | (key_pos == query_pos)


class NGPTModel(NGPTPreTrainedModel):
    """Embedding and layers; returns the last hidden states (unit vectors)."""

    def __init__(self, config: NGPTConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(NGPTBlock(config, i) for i in range(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                use_cache: bool | None = None, **kwargs) -> BaseModelOutputWithPast:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        seq_len = input_ids.shape[1]
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, past + seq_len, device=input_ids.device)[None]
            else:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -seq_len:]
        if attention_mask is not None:
            mask = attention_mask_4d(attention_mask, seq_len)
        elif past and seq_len > 1:
            mask = attention_mask_4d(torch.ones(1, past + seq_len, device=input_ids.device),
                                     seq_len)
        else:
            mask = None  # causal from scratch, or one new token that sees the whole cache
        rope = rope_tables(position_ids, self.config.head_dim, self.config.rope_theta)
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, rope, mask, cache)
        return BaseModelOutputWithPast(last_hidden_state=h, cache=cache if use_cache else None)


class NGPTForCausalLM(NGPTPreTrainedModel, GenerationMixin):
    """nGPT with its LM head: unit-norm rows of W_lm, logits scaled by `s_z`."""

    def __init__(self, config: NGPTConfig) -> None:
        super().__init__(config)
        self.model = NGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.s_z = nn.Parameter(torch.ones(config.vocab_size))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                use_cache: bool | None = None, labels: torch.LongTensor | None = None,
                logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        out = self.model(input_ids, attention_mask, position_ids, cache, use_cache)
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h) * self.s_z.to(h.dtype)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)
