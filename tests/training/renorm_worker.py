"""A few DeepSpeed steps of tiny nGPT, then unit norms in master and model weights, on every rank
(test_renormalization.py, through `run_on_ranks`). Sizes and rank counts are chosen so that ZeRO
partitions cut rows of normalized matrices (asserted): a vocabulary of 255 rows for ZeRO-3's
halves, 3 data-parallel ranks for ZeRO-1/2.
"""

from __future__ import annotations

import os

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param
from megatron.core import parallel_state as ps

from megatron_ngpt.models.normalize import normalized_dim
from megatron_ngpt.models.transformer_config import build_transformer_config
from megatron_ngpt.parallel.state import init_distributed
from megatron_ngpt.training.engine import build_engine
from megatron_ngpt.training.trainer import build_model
from tests.tiny import tiny_config

VOCAB, SEQ, MBS = 255, 16, 2


def split_rows(params) -> int:
    """How many normalized matrices have a vector cut by this rank's partition boundary."""
    cuts = 0
    for p in params:
        dim = normalized_dim(p)
        row = (p.ds_shape if hasattr(p, "ds_shape") else p.shape)[1]
        if hasattr(p, "ds_id"):
            start = ps.get_data_parallel_rank() * p.partition_numel()
            cuts += start % row != 0 or (dim == 0 and p.ds_numel > p.partition_numel())
        elif getattr(p, "_hp_mapping", None) is not None:
            a = p._hp_mapping.lp_fragment_address
            cuts += a.start % row != 0 or (a.start + a.numel) % row != 0 or \
                (dim == 0 and a.numel < p.numel())
    return cuts


def check(zero: int, precision: str, pp: int) -> dict[str, object]:
    """Train 3 steps, assert unit norms; returns how many vectors partitions cut, and the path."""
    dp = int(os.environ["WORLD_SIZE"]) // pp
    cfg = tiny_config("ngpt",
        f"model.vocab_size={VOCAB}", "model.ffn_hidden_size=96", f"parallel.zero_stage={zero}",
        f"training.precision={precision}", f"parallel.pipeline_model_parallel_size={pp}",
        f"training.micro_batch_size={MBS}", f"training.global_batch_size={MBS * dp * 2}",
        "optimizer.lr=0.02",
    )
    dims = init_distributed(1, pp, "cpu")
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model_config = build_transformer_config(cfg.model, VOCAB, 1, pp, dtype)
    eng = build_engine(cfg, build_model(model_config, dims), dims)
    generator = torch.Generator().manual_seed(ps.get_data_parallel_rank())
    for _ in range(3):
        batches = [torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=generator)
                   for _ in range(eng.grad_accumulation)]
        if eng.is_pipeline:
            eng.engine.train_batch(iter([(b[:, :-1], (b[:, 1:], torch.ones(MBS, SEQ)))
                                         for b in batches]))
        else:
            for b in batches:
                eng.engine.backward(eng.engine(b[:, :-1], labels=b[:, 1:]))
                eng.engine.step()
    params = [p for p in eng.module.parameters() if normalized_dim(p) is not None]
    cuts = torch.tensor([split_rows(params)])
    dist.all_reduce(cuts)
    assert zero == 0 or cuts.item() > 0, "no partition boundary cut a normalized vector"
    # bf16 masters (bf16-params) hold each normalized entry to bf16's rounding.
    master_tolerance = 1e-2 if precision == "bf16-params" else 1e-5
    for p in params:
        dim = normalized_dim(p)
        # DeepSpeed's own accessor (independent of parallel/deepspeed_internals.py) for ZeRO
        # 1-3; ZeRO-0 has none: the parameter itself (fp32) or its fp32 copy (bf16).
        master = safe_get_full_fp32_param(p)
        if master is None:
            master = _zero0_master(eng.engine.optimizer, p)
        err = (master.float().norm(dim=dim) - 1).abs().max().item()
        assert err < master_tolerance, f"master weight not unit-norm along dim {dim}: {err}"
        with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
            model_err = (p.detach().float().norm(dim=dim) - 1).abs().max().item()
            # In fp32 the model weight is a copy of the master made after the renormalization:
            # a second pass over the masters after that copy (ZeRO-1/2 step their groups one at
            # a time) would leave them apart in the last bits.
            assert precision != "fp32" or torch.equal(master.float(), p.detach().float()), \
                "the fp32 model weight is not the master weight it was copied from"
        tolerance = 1e-5 if precision == "fp32" else 1e-2
        assert model_err < tolerance, f"model weight not unit-norm along dim {dim}: {model_err}"
    return {"matrices": len(params), "cut_vectors": cuts.item(), "path": eng.renormalization,
            "master_dtypes": sorted(map(str, _master_dtypes(eng.engine.optimizer, params)))}


def _master_dtypes(optimizer, params) -> set[torch.dtype]:
    """The dtypes of the masters as DeepSpeed itself holds them (its partitions)."""
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):  # ZeRO-3
        return {flat.dtype for flat in optimizer.fp32_partitioned_groups_flat if flat.numel()}
    mappings = [p._hp_mapping for p in params if getattr(p, "_hp_mapping", None) is not None]
    if mappings:  # ZeRO-1/2 and the BF16 optimizer
        return {m.hp_fragment.dtype for m in mappings}
    return {_zero0_master(optimizer, p).dtype for p in params}


def _zero0_master(optimizer, param: torch.Tensor) -> torch.Tensor:
    """ZeRO-0's master of `param`, read from DeepSpeed's `FP16_UnfusedOptimizer` groups."""
    for lp_group, hp_group in zip(getattr(optimizer, "fp16_groups", []),
                                  getattr(optimizer, "fp32_groups", []), strict=False):
        for lp, hp in zip(lp_group, hp_group, strict=True):
            if lp is param:
                return hp.detach()
    return param.detach()
