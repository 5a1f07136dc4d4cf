"""Check an exported Hugging Face folder against the `LanguageModel` it came from.

Used by the export tests and by the checkpoint tests (TP/PP/ZeRO layouts), which build or load a
`LanguageModel`, export it, and compare logits and greedy decoding.
"""

from __future__ import annotations

from pathlib import Path

import torch
from megatron.core import parallel_state, tensor_parallel
from transformers import AutoModelForCausalLM, PreTrainedModel

from megatron_ngpt.models.language_model import LanguageModel


@torch.no_grad()
def language_model_logits(language_model: LanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary float32 logits ``[b, s, V]`` (gathered over tensor parallelism)."""
    language_model.eval()
    logits = language_model(tokens)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
    return logits.float()


def load_hf_model(hf_dir: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The exported model as any user would load it (remote code allowed, eval mode)."""
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=True, dtype=dtype)
    return model.eval()


def assert_logit_parity(language_model: LanguageModel, hf_dir: str | Path,
                        tokens: torch.Tensor, atol: float = 1e-4) -> float:
    """Assert the exported model's logits equal the `LanguageModel`'s; returns the max |diff|."""
    expected = language_model_logits(language_model, tokens)
    with torch.no_grad():
        got = load_hf_model(hf_dir)(tokens).logits.float()
    if got.shape != expected.shape:
        raise AssertionError(f"logits shape {tuple(got.shape)} != {tuple(expected.shape)}")
    diff = (got - expected).abs()
    max_diff = diff.max().item()
    if not max_diff < atol:
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(f"{hf_dir}: max |logit diff| {max_diff:.3g} >= {atol:g} "
                             f"at (batch, position, token) {where}")
    return max_diff


@torch.no_grad()
def greedy_decode(language_model: LanguageModel, prompt: torch.Tensor,
                  max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation ``[b, s + max_new_tokens]``, recomputing the whole prefix each step."""
    tokens = prompt
    for _ in range(max_new_tokens):
        next_token = language_model_logits(language_model, tokens)[:, -1].argmax(-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
    return tokens
