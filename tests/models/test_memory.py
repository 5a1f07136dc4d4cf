"""The memory plan's terms against independent counts: the real model's parameters on the meta
device, and the tensors autograd really keeps in a CPU forward pass.

The whole step (DeepSpeed's buffers, peaks) is checked against measured memory by
``bench/bench_memory.py``.
"""

from __future__ import annotations

import pytest
import torch

from megatron_ngpt import memory
from megatron_ngpt.config import Config, load_config
from megatron_ngpt.models.language_model import (
    LanguageModel,
    OutputStage,
    TransformerLayerStage,
    language_model_loss,
)
from megatron_ngpt.models.transformer_config import build_transformer_config
from tests.distributed import REPO

CONFIGS = REPO / "configs"

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The formula counts every tensor of a few hundred bytes per token or more; what it leaves out
# (copies of the nGPT scaling vectors) is under 0.2% here. The whole step against
# measured memory is within a few percent (bench/bench_memory.py).
TOLERANCE = 0.02


def _bytes_by_regime(model: torch.nn.Module, regime: str) -> int:
    """Each parameter's bytes as the regime stores it: DeepSpeed's bf16 modes cast every
    parameter (tables and scaling vectors too) to bf16."""
    return sum((4 if regime == "fp32" else 2) * p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", ["ngpt_1b_1k", "gpt2_0.5b_1k"])
def test_weight_bytes_match_the_real_model_in_every_regime(single_rank, config: str) -> None:
    cfg = load_config(CONFIGS / f"{config}.yaml")
    vocab = cfg.model.vocab_size
    with torch.device("meta"):
        model = LanguageModel(build_transformer_config(cfg.model, vocab))
    params = memory.stage_params(cfg, vocab, tp=1, pp=1, stage=0)
    assert params.total == sum(p.numel() for p in model.parameters())
    for regime in memory.REGIMES:
        assert memory.weight_bytes_full(params, regime) == _bytes_by_regime(model, regime), regime


def test_pipeline_stages_split_the_parameters(single_rank) -> None:
    cfg = load_config(CONFIGS / "ngpt_0.5b_1k.yaml")
    whole = memory.stage_params(cfg, 32000, tp=1, pp=1, stage=0)
    stages = [memory.stage_params(cfg, 32000, tp=1, pp=4, stage=s) for s in range(4)]
    assert sum(s.total for s in stages) == whole.total
    assert [s.tables for s in stages] == [32000 * 1024, 0, 0, 32000 * 1024]


def _tiny(arch: str, precision: str, *overrides: str) -> Config:
    """The tiny config at the 0.5B configs' proportions (d_ff = 4 d), a few hundred tokens."""
    return load_config(CONFIGS / "tiny" / f"{arch}.yaml", [
        "model.vocab_size=1024", "model.hidden_size=128", "model.ffn_hidden_size=512",
        "model.num_attention_heads=4", "data.seq_length=128", "training.micro_batch_size=2",
        "training.global_batch_size=2", f"training.precision={precision}", *overrides])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["ngpt", "gpt2"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["", "checkpointed"])
def test_layer_activations_match_a_measured_forward(single_rank, arch: str, precision: str,
                                                    checkpointing: bool) -> None:
    cfg = _tiny(arch, precision, f"parallel.activation_checkpointing={str(checkpointing).lower()}")
    layout = memory.layout_from_config(cfg, 1)
    config = build_transformer_config(cfg.model, 1024, params_dtype=DTYPES[precision],
                                      activation_checkpointing=checkpointing)
    layer = TransformerLayerStage(config, 1).to(DTYPES[precision])
    hidden = torch.randn(layout.seq_length, layout.micro_batch, cfg.model.hidden_size,
                         dtype=DTYPES[precision], requires_grad=True)
    measured = memory.kept_for_backward(lambda: layer(hidden), list(layer.parameters()))
    if checkpointing:
        predicted = memory.checkpointed_layer_bytes(cfg, layout, precision)
    else:
        predicted = memory.layer_activation_bytes(cfg, layout, precision, fused=False)
    assert predicted == pytest.approx(measured, rel=TOLERANCE)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["ngpt", "gpt2"])
def test_head_and_loss_activations_match_a_measured_forward(single_rank, arch: str,
                                                            precision: str) -> None:
    cfg = _tiny(arch, precision)
    layout = memory.layout_from_config(cfg, 1)
    config = build_transformer_config(cfg.model, 1024, params_dtype=DTYPES[precision])
    head = OutputStage(config).to(DTYPES[precision])
    hidden = torch.randn(layout.seq_length, layout.micro_batch, cfg.model.hidden_size,
                         dtype=DTYPES[precision], requires_grad=True)
    labels = torch.randint(0, 1024, (layout.micro_batch, layout.seq_length))
    measured = memory.kept_for_backward(lambda: language_model_loss(head(hidden), labels),
                                  list(head.parameters()))
    predicted = memory.head_activation_bytes(cfg, layout, precision, False, 1024)
    assert predicted == pytest.approx(measured, rel=TOLERANCE)
