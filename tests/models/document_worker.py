"""Document attention's packed-versus-alone logits at a parallel layout
(test_document_attention.py, in-process or through `run_on_ranks`).

One document, `DOC`, is packed after other documents, at another offset in each of two sequences;
its logits there must be the logits of `DOC` alone: with document attention nothing before a
document reaches it. Positions come from megatron-core's own `reset_position_ids` (what the
dataset produces with `data.document_attention`). fp32 throughout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.transformer_config import build_transformer_config
from megatron_ngpt.parallel.pipeline import build_pipeline_module
from megatron_ngpt.parallel.state import init_distributed
from megatron_ngpt.training.engine import build_engine
from tests.models.tp_worker import gather_tp
from tests.tiny import tiny_config

VOCAB = 256
EOD = 2
ARCHS = ("ngpt", "gpt2")


def document(length: int, seed: int) -> torch.Tensor:
    """`length` tokens without EOD, then EOD."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(EOD + 1, VOCAB, (length - 1,), generator=gen),
                      torch.tensor([EOD])])


DOC = document(10, 0)
# Each row: (documents before DOC, documents after it), 24 tokens in all.
PACKED = (((document(7, 1),), (document(7, 2),)),
          ((document(2, 3), document(3, 4), document(6, 5)), (document(3, 6),)))
# DOC alone at the start of a row of the same length (for the pipeline, whose stages expect one
# shape): what follows cannot reach it.
ALONE_FIRST = ((), (document(14, 7),)), ((), (document(14, 8),))


def batch(rows) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(tokens, megatron-core's restarted positions, where `DOC` starts in each row)."""
    sequences, starts = [], []
    for before, after in rows:
        starts.append(sum(len(d) for d in before))
        sequences.append(torch.cat([*before, DOC, *after]))
    tokens = torch.stack(sequences)
    positions = torch.stack([
        _get_ltor_masks_and_position_ids(row, EOD, True, False, False, False)[2]
        for row in tokens])
    return tokens, positions, starts


def doc_logits(logits: torch.Tensor, starts: list[int]) -> torch.Tensor:
    """`DOC`'s logits ``[rows, len(DOC), V]`` out of full-vocabulary logits ``[b, s, V]``."""
    return torch.stack([logits[i, start:start + len(DOC)] for i, start in enumerate(starts)])


def model(arch: str, tp: int = 1) -> LanguageModel:
    torch.manual_seed(1234)
    return LanguageModel(build_transformer_config(tiny_config(arch).model, VOCAB, tp)).eval()


@torch.no_grad()
def packed_and_alone(arch: str) -> dict[str, torch.Tensor]:
    """`DOC`'s full logits packed (document attention) and alone (plain causal model), at this
    process's tensor-parallel size."""
    lm = model(arch, parallel_state.get_tensor_model_parallel_world_size())
    tokens, positions, starts = batch(PACKED)
    packed = gather_tp(lm(tokens, position_ids=positions), -1)
    alone = gather_tp(lm(DOC[None]), -1)
    return {"packed": doc_logits(packed, starts), "alone": alone.expand(len(starts), -1, -1)}


def tensor_parallel(tp: int) -> dict[str, dict[str, torch.Tensor]] | None:
    init_distributed(tp, 1, "cpu")
    results = {arch: packed_and_alone(arch) for arch in ARCHS}
    return results if dist.get_rank() == 0 else None


def _pipeline_logits(engine, rows) -> torch.Tensor | None:
    """`DOC`'s logits through the pipeline (None on stages other than the last)."""
    tokens, positions, starts = batch(rows)
    labels = (torch.zeros_like(tokens), torch.ones(tokens.shape))
    _, logits = engine.eval_batch(iter([((tokens, positions), labels)]), return_logits=True)
    return None if logits is None else doc_logits(logits, starts)


def pipeline(pp: int) -> dict[str, dict[str, torch.Tensor]] | None:
    """`DOC`'s logits packed and first in its rows, both with document attention, through
    DeepSpeed's pipeline engine (`eval_batch`); the last stage returns them."""
    dims = init_distributed(1, pp, "cpu")
    results = {}
    for arch in ARCHS:
        cfg = tiny_config(arch, f"parallel.pipeline_model_parallel_size={pp}",
                          "parallel.zero_stage=1", "training.precision=fp32",
                          "training.micro_batch_size=2", "training.global_batch_size=2")
        torch.manual_seed(1234)
        config = build_transformer_config(cfg.model, VOCAB, 1, pp)
        engine = build_engine(cfg, build_pipeline_module(config, 1, pp, dims.dp), dims).engine
        results[arch] = {"packed": _pipeline_logits(engine, PACKED),
                         "alone": _pipeline_logits(engine, ALONE_FIRST)}
    return results if parallel_state.is_pipeline_last_stage() else None
