"""`model.compile_layers`: each megatron layer is one `torch.compile` graph with eager numbers."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.transformer_config import build_transformer_config
from tests.tiny import tiny_config

ARCHS = ["ngpt", "gpt2"]


def _model(arch: str, *overrides: str) -> LanguageModel:
    config = build_transformer_config(tiny_config(arch, *overrides).model, 256)
    return LanguageModel(config)


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_traces_into_one_graph(single_rank, arch: str) -> None:
    """No graph breaks at TP=1: megatron's `RowParallelLinear` used to warn (untraceable) on every
    call; `GroupedRowParallelLinear` passes its group instead."""
    stage = _model(arch).layers[0]
    hidden = torch.randn(16, 2, 64)
    explained = torch._dynamo.explain(stage.layer)(
        hidden, attention_mask=None, rotary_pos_emb=stage.rotary(16)
    )
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_layers_match_eager(single_rank, arch: str) -> None:
    eager = _model(arch)
    compiled = _model(arch, "model.compile_layers=true")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    gen = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 256, (2, 2, 16), generator=gen)
    torch._dynamo.reset()
    counters.clear()
    losses = []
    for model in (eager, compiled):
        loss = model(tokens, labels)
        loss.backward()
        losses.append(loss.detach())
    # The compiled model did compile, and both of its layers run the same graph.
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters(),
                                           strict=True):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-5, atol=1e-6,
                                   msg=name)
