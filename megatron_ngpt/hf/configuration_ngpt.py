"""Hugging Face configuration of nGPT (normalized transformer, arXiv 2410.01131).

Self-contained: the export copies this file next to the weights, so it must import nothing from
megatron_ngpt.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class NGPTConfig(PretrainedConfig):
    """Shapes of an nGPT model. The scaling vectors in the weights are effective values."""

    model_type = "ngpt"

    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    # NVIDIA's reference code also scales u by sqrt(d); the paper scales only v.
    scale_u_by_sqrt_d: bool = False
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
