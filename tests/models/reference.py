"""An independent nanoGPT-style reference of nGPT and the GPT-2 baseline, in plain torch.

Written from the math (`docs/ngpt-math.md`), not from `megatron_ngpt.models`: weights are
plain tensors in torch `Linear` layout ``[out, in]``, scaling vectors are the *effective* values,
attention is an explicit masked softmax. RoPE is Hugging Face Llama's half-split `rotate_half`
with base 10000 and its float32 angle table (cast to the activation dtype), which is what
megatron-core computes too.

Given `eod`, a sequence is read as packed documents, each ending with that token: a token attends
only to the earlier tokens of its document and its RoPE position counts from its document's
first token (document attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RefConfig:
    num_layers: int
    hidden_size: int
    num_heads: int
    rotary_base: int = 10000
    norm: str = "RMSNorm"  # GPT-2 only
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: int, dtype: torch.dtype):
    """HF Llama's table: float32 inverse frequencies and angles, [..., head_dim] each."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def documents(tokens: torch.Tensor, eod: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(document number, position in the document) of every token of ``[b, s]`` sequences in
    which each document ends with `eod` (None: each sequence is one document)."""
    b, s = tokens.shape
    doc = torch.zeros(b, s, dtype=torch.long)
    pos = torch.zeros(b, s, dtype=torch.long)
    for i in range(b):
        for j in range(1, s):
            new_document = eod is not None and tokens[i, j - 1] == eod
            doc[i, j] = doc[i, j - 1] + new_document
            pos[i, j] = 0 if new_document else pos[i, j - 1] + 1
    return doc, pos


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention(x: torch.Tensor, w: Weights, p: str, cfg: RefConfig, ngpt: bool,
              doc: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Causal multi-head self-attention on ``[b, s, d]`` within the documents `doc` at RoPE
    positions `pos` (`documents`); returns ``x W_o^T``."""
    b, s, _ = x.shape
    heads = lambda t: t.view(b, s, cfg.num_heads, cfg.head_dim).transpose(1, 2)  # [b, H, s, dh]
    q, k, v = (heads(x @ w[p + name].T) for name in ("wq", "wk", "wv"))
    cos, sin = (t[:, None] for t in rope_cos_sin(pos, cfg.head_dim, cfg.rotary_base, x.dtype))
    q, k = (t * cos + rotate_half(t) * sin for t in (q, k))
    if ngpt:
        s_qk = w[p + "s_qk"].view(cfg.num_heads, 1, cfg.head_dim)
        q, k = s_qk * unit(q), s_qk * unit(k)
        scale = math.sqrt(cfg.head_dim)
    else:
        scale = 1.0 / math.sqrt(cfg.head_dim)
    scores = (q @ k.transpose(-1, -2)) * scale
    same_document = doc[:, None, :, None] == doc[:, None, None, :]
    allowed = same_document & torch.ones(s, s, dtype=torch.bool).tril()
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(b, s, -1)
    return out @ w[p + "wo"].T


def ngpt_forward(w: Weights, tokens: torch.Tensor, cfg: RefConfig,
                 eod: int | None = None) -> torch.Tensor:
    """nGPT logits ``[b, s, V]`` (paper's MLP: only v is scaled by sqrt(d))."""
    doc, pos = documents(tokens, eod)
    h = w["wte"][tokens]
    for i in range(cfg.num_layers):
        p = f"h{i}."
        h_a = attention(h, w, p, cfg, True, doc, pos)
        h = unit(h + w[p + "alpha_a"].abs() * (unit(h_a) - h))
        u = w[p + "s_u"] * (h @ w[p + "w_u"].T)
        v = w[p + "s_v"] * (h @ w[p + "w_v"].T) * math.sqrt(cfg.hidden_size)
        h_m = (u * F.silu(v)) @ w[p + "w_down"].T
        h = unit(h + w[p + "alpha_m"].abs() * (unit(h_m) - h))
    return w["s_z"] * (h @ w["w_lm"].T)


def _norm(x: torch.Tensor, w: Weights, name: str, cfg: RefConfig) -> torch.Tensor:
    if cfg.norm == "RMSNorm":
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + cfg.eps) * w[name + ".weight"]
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + cfg.eps) * w[name + ".weight"] + w[name + ".bias"]


def gpt2_forward(w: Weights, tokens: torch.Tensor, cfg: RefConfig,
                 eod: int | None = None) -> torch.Tensor:
    """Pre-norm GPT-2 with RoPE and a SwiGLU MLP, no linear biases, final norm, untied head."""
    doc, pos = documents(tokens, eod)
    h = w["wte"][tokens]
    for i in range(cfg.num_layers):
        p = f"h{i}."
        h = h + attention(_norm(h, w, p + "ln1", cfg), w, p, cfg, False, doc, pos)
        x = _norm(h, w, p + "ln2", cfg)
        h = h + (F.silu(x @ w[p + "w_gate"].T) * (x @ w[p + "w_up"].T)) @ w[p + "w_down"].T
    return _norm(h, w, "ln_f", cfg) @ w["w_lm"].T
