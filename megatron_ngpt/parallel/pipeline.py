"""Pipeline parallelism through DeepSpeed's `PipelineModule`, built from the model's own stages.

The pipeline is the list embedding -> layer 1..L -> output head of `language_model.py` as
`LayerSpec`s, so each stage builds only its own modules; DeepSpeed's topology orders ranks like
megatron-core (tensor fastest, then data, then pipeline), which `check_rank_alignment` asserts.
With document attention the first stage's input is ``(tokens, position_ids)`` and each stage
sends ``(hidden, position_ids)`` to the next: the positions are an integer tensor, which
DeepSpeed's engine sends along without a gradient.
"""

from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, PipelineModule
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core import parallel_state as ps

from megatron_ngpt.models.language_model import (
    EmbeddingStage,
    OutputStage,
    TransformerLayerStage,
    language_model_loss,
)
from megatron_ngpt.models.transformer_config import LMTransformerConfig


def pipeline_loss(logits: torch.Tensor, labels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    tokens_labels, loss_mask = labels
    return language_model_loss(logits, tokens_labels, loss_mask)


def build_pipeline_module(config: LMTransformerConfig, tp: int, pp: int, dp: int
                          ) -> PipelineModule:
    layers = [
        LayerSpec(EmbeddingStage, config),
        *(LayerSpec(TransformerLayerStage, config, i + 1)
          for i in range(config.num_layers)),
        LayerSpec(OutputStage, config),
    ]
    return PipelineModule(
        layers=layers,
        loss_fn=pipeline_loss,
        topology=PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp),
        partition_method="type:TransformerLayerStage",
    )


def language_model_name(pipeline_name: str, num_layers: int) -> str:
    """Map a `PipelineModule` parameter name ("3.layer.mlp...") to the `LanguageModel` name."""
    index, rest = pipeline_name.split(".", 1)
    index = int(index)
    if index == 0:
        return f"embedding.{rest}"
    if index <= num_layers:
        return f"layers.{index - 1}.{rest}"
    return f"head.{rest}"


def check_rank_alignment(engine) -> None:
    """DeepSpeed's pipeline grid must place every rank where megatron-core does."""
    grid = engine.grid
    mine = (ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank(),
            ps.get_pipeline_model_parallel_rank())
    theirs = (grid.get_slice_parallel_rank(), grid.get_data_parallel_rank(), grid.get_stage_id())
    if mine != theirs:
        raise RuntimeError(f"rank order mismatch: megatron-core (tp, dp, pp) = {mine}, "
                           f"DeepSpeed pipeline grid = {theirs}")
