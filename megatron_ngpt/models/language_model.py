"""The language model: embedding stage, transformer-layer stages, output stage, loss.

The three stage classes are the only model definition. `LanguageModel` runs them in order on one
pipeline stage; the pipeline engine builds the same classes, split across stages
(see `megatron_ngpt.parallel.pipeline`). Activations between stages are megatron's
``[s, b, h]`` hidden states; with document attention (`documents.py`) every stage takes and
passes on ``(activations, position_ids)``, the positions ``[b, s]`` restarting at each document.
"""

from __future__ import annotations

import contextlib

import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from megatron_ngpt.models.documents import document_mask, rotary_at
from megatron_ngpt.models.layers import ScaledLMHead
from megatron_ngpt.models.normalize import mark_normalized, normalize_matrix_
from megatron_ngpt.models.scaling import ScalingVector
from megatron_ngpt.models.specs import TE, layer_spec
from megatron_ngpt.models.te_support import require_transformer_engine
from megatron_ngpt.models.transformer_config import LMTransformerConfig

StageInput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _unpack(inputs: StageInput) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A stage's input as (activations, position ids or None without document attention)."""
    if isinstance(inputs, (tuple, list)):
        return inputs[0], inputs[1]
    return inputs, None


def _pack(outputs: torch.Tensor, position_ids: torch.Tensor | None) -> StageInput:
    return outputs if position_ids is None else (outputs, position_ids)


@contextlib.contextmanager
def init_rng(config: LMTransformerConfig, offset: int):
    """Seed each stage's weight init on its own, so that a model split into pipeline stages
    starts from exactly the weights of the whole model (and of any TP size)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed + offset)
        yield


class EmbeddingStage(MegatronModule):
    """Token ids ``[b, s]`` -> hidden states ``[s, b, h]`` (vocab-parallel; unit rows for nGPT)."""

    def __init__(self, config: LMTransformerConfig) -> None:
        super().__init__(config=config)
        with init_rng(config, 0):
            self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
                num_embeddings=config.vocab_size,
                embedding_dim=config.hidden_size,
                init_method=config.init_method,
                config=config,
            )
            if config.arch == "ngpt":
                mark_normalized(self.word_embeddings.weight, 1)
                normalize_matrix_(self.word_embeddings.weight.data, 1)

    def forward(self, inputs: StageInput) -> StageInput:
        """Token ids, or (token ids, position ids) with document attention."""
        tokens, position_ids = _unpack(inputs)
        return _pack(self.word_embeddings(tokens).transpose(0, 1).contiguous(), position_ids)


class TransformerLayerStage(MegatronModule):
    """One megatron-core `TransformerLayer` built from the spec, with its RoPE table."""

    def __init__(self, config: LMTransformerConfig, layer_number: int):
        super().__init__(config=config)
        with init_rng(config, layer_number):
            if config.transformer_impl == TE:
                require_transformer_engine()
            self.layer = build_module(layer_spec(config), config=config,
                                      layer_number=layer_number)
            self.rotary = RotaryEmbedding(
                kv_channels=config.kv_channels,
                rotary_percent=1.0,
                rotary_base=config.rotary_base,
                use_cpu_initialization=True,
            )
        if config.compile_layers:
            # The megatron layer alone: one graph at TP=1 (the RoPE table stays eager and cached).
            # `Module.compile` keeps the parameter names, so checkpoints do not change.
            self.layer.compile(dynamic=False)

    def _layer(self, hidden: torch.Tensor, position_ids: torch.Tensor | None = None
               ) -> torch.Tensor:
        rotary = self.rotary(hidden.shape[0])
        mask = None
        if position_ids is not None:  # document attention
            rotary, mask = rotary_at(rotary, position_ids), document_mask(position_ids)
        return self.layer(hidden, attention_mask=mask, rotary_pos_emb=rotary)[0]

    def forward(self, inputs: StageInput) -> StageInput:
        hidden, position_ids = _unpack(inputs)
        if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
            hidden = torch.utils.checkpoint.checkpoint(self._layer, hidden, position_ids,
                                                       use_reentrant=False)
        else:
            hidden = self._layer(hidden, position_ids)
        return _pack(hidden, position_ids)


class OutputStage(MegatronModule):
    """Hidden ``[s, b, h]`` -> vocab-parallel logits ``[b, s, V / TP]``.

    GPT-2: final norm, then the LM head. nGPT: no final norm; unit-norm head rows and `s_z`.
    """

    def __init__(self, config: LMTransformerConfig) -> None:
        super().__init__(config=config)
        is_ngpt = config.arch == "ngpt"
        with init_rng(config, config.num_layers + 1):
            self.final_norm = (
                None if is_ngpt
                else WrappedTorchNorm(config, config.hidden_size, eps=config.layernorm_epsilon)
            )
            linear = ScaledLMHead if is_ngpt else tensor_parallel.ColumnParallelLinear
            self.output_layer = linear(
                config.hidden_size, config.vocab_size, config=config,
                init_method=config.init_method, bias=False, gather_output=False,
                skip_bias_add=False,
            )
            self.s_z = (
                ScalingVector(config, config.vocab_size, kind="s_z", tensor_parallel=True)
                if is_ngpt else None
            )

    def forward(self, inputs: StageInput) -> torch.Tensor:
        hidden, _ = _unpack(inputs)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        # To batch-first before the head: a copy of the hidden states costs vocab / hidden times
        # less than one of the logits.
        hidden = hidden.transpose(0, 1).contiguous()
        if self.s_z is None:
            return self.output_layer(hidden)[0]
        return self.output_layer(hidden, self.s_z())[0]


def language_model_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross entropy over vocab-parallel logits ``[b, s, V / TP]`` (computed in fp32)."""
    # vocab_parallel_cross_entropy modifies its input in place; .float() copies bf16, clone fp32.
    logits = logits.float() if logits.dtype != torch.float32 else logits.clone()
    losses = tensor_parallel.vocab_parallel_cross_entropy(logits, labels)
    if loss_mask is None:
        return losses.mean()
    loss_mask = loss_mask.to(losses.dtype)
    return (losses * loss_mask).sum() / loss_mask.sum().clamp_min(1.0)


class LanguageModel(MegatronModule):
    """The whole model on one pipeline stage: embedding, layers, output head."""

    def __init__(self, config: LMTransformerConfig) -> None:
        super().__init__(config=config)
        self.embedding = EmbeddingStage(config)
        self.layers = torch.nn.ModuleList(
            TransformerLayerStage(config, i + 1) for i in range(config.num_layers)
        )
        self.head = OutputStage(config)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[b, s, V / TP]``, or the mean loss when `labels` are given. With
        `position_ids` (restarting at 0 at each document start), document attention."""
        x = self.embedding(_pack(tokens, position_ids))
        for layer in self.layers:
            x = layer(x)
        logits = self.head(x)
        return logits if labels is None else language_model_loss(logits, labels, loss_mask)
