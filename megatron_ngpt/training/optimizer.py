"""AdamW parameter groups and nGPT's renormalization of the fp32 master weights under DeepSpeed.

After every optimizer step the *master* weights must be re-normalized: normalizing only the bf16
model copy is undone by the next step. Where the master lives depends on the ZeRO stage:

- ZeRO-0: the model parameters themselves in fp32; in bf16, whole fp32 copies of them;
- ZeRO-1/2 and DeepSpeed's BF16 optimizer: flat fp32 partitions; each model parameter that overlaps
  this rank's partition carries ``_hp_mapping`` (its flat offset and a view of the master slice);
- ZeRO-3: per-parameter partitions of ``ceil(numel / DP)`` elements, found via ``grad_position``.

In every case the step is hooked *after* the Adam update and *before* DeepSpeed copies the masters
into the model copies, and the owned fragments are normalized with
:func:`~megatron_ngpt.models.normalize.normalize_fragments_` over the data-parallel group (one
small all-reduce per step). Rows that a partition boundary splits get their full sum of squares.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.distributed as dist

from megatron_ngpt.models.normalize import (
    Fragment,
    matrix_fragment,
    normalize_fragments_,
    normalized_dim,
)
from megatron_ngpt.models.scaling import is_scaling_vector

NORMALIZE_GROUP_KEY = "ngpt_normalize"


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; scaling vectors, norms and biases get none.

    Normalized matrices form their own group (flagged for the renormalization hook).
    """
    normalized, decayed, plain = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if normalized_dim(param) is not None:
            normalized.append(param)
        elif param.dim() >= 2 and not is_scaling_vector(param):
            decayed.append(param)
        else:
            plain.append(param)
    groups = [
        {"params": normalized, "weight_decay": weight_decay, NORMALIZE_GROUP_KEY: True},
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _empty_like(param: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32, device=param.device)


def master_copies(engine_optimizer) -> dict[int, torch.Tensor]:
    """ZeRO-0 in bf16: DeepSpeed keeps a whole fp32 copy of each parameter (by parameter id)."""
    pairs = zip(getattr(engine_optimizer, "fp16_groups", []),
                getattr(engine_optimizer, "fp32_groups", []), strict=False)
    return {id(lp): hp for lp_group, hp_group in pairs
            for lp, hp in zip(lp_group, hp_group, strict=True)}


def _hp_fragment(param: torch.Tensor) -> Fragment:
    """ZeRO-1/2 / BF16 optimizer: the slice of the flat fp32 partition this rank owns."""
    mapping = getattr(param, "_hp_mapping", None)
    dim = normalized_dim(param)
    if mapping is None:
        return Fragment(_empty_like(param), tuple(param.shape), dim, 0)
    return Fragment(mapping.hp_fragment.view(-1), tuple(param.shape), dim,
                    mapping.lp_fragment_address.start)


def _zero3_fragment(optimizer, param: torch.Tensor, dp_rank: int) -> Fragment:
    """ZeRO-3: this rank's ``ceil(numel / DP)`` slice of the parameter, in the fp32 master."""
    group, offset, count = optimizer.grad_position[optimizer.get_param_id(param)]
    master = optimizer.fp32_partitioned_groups_flat[group].narrow(0, offset, count)
    start = dp_rank * count
    valid = max(0, min(count, param.ds_numel - start))
    return Fragment(master[:valid], tuple(param.ds_shape), normalized_dim(param), start)


def _normalized(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p for p in params if normalized_dim(p) is not None]


def install_renormalization(engine_optimizer, model: torch.nn.Module) -> str:
    """Hook nGPT's renormalization into the DeepSpeed optimizer; returns which path is used."""
    if hasattr(engine_optimizer, "fp32_partitioned_groups_flat"):
        return _install_zero3(engine_optimizer)
    dp_group = getattr(engine_optimizer, "dp_process_group", None)
    params = _normalized(model.parameters())
    base = getattr(engine_optimizer, "optimizer", engine_optimizer)
    use_hp = any(hasattr(p, "_hp_mapping") for p in params)
    copies = master_copies(engine_optimizer)

    def fragments() -> list[Fragment]:
        if use_hp:
            return [_hp_fragment(p) for p in params]
        return [matrix_fragment(copies.get(id(p), p), normalized_dim(p)) for p in params]

    step = base.step

    @functools.wraps(step)
    def step_then_normalize(*args, **kwargs):
        result = step(*args, **kwargs)
        if any(g.get(NORMALIZE_GROUP_KEY) for g in base.param_groups):
            with torch.no_grad():
                normalize_fragments_(fragments(), dp_group if use_hp else None)
        return result

    base.step = step_then_normalize
    return "zero-partitions" if use_hp else "fp32-copies" if copies else "parameters"


def _install_zero3(optimizer) -> str:
    dp_rank = dist.get_rank(optimizer.dp_process_group)
    reassign = optimizer._reassign_or_swap_out_partitioned_parameters

    @functools.wraps(reassign)
    def normalize_then_reassign(sub_group_id: int):
        params = _normalized(optimizer.fp16_groups[sub_group_id])
        if params:
            with torch.no_grad():
                normalize_fragments_([_zero3_fragment(optimizer, p, dp_rank) for p in params],
                                     optimizer.dp_process_group)
        return reassign(sub_group_id)

    optimizer._reassign_or_swap_out_partitioned_parameters = normalize_then_reassign
    return "zero3-partitions"
