"""Layout-independent master state: fp32 weights and Adam moments as full TP=1 tensors.

DeepSpeed's own checkpoints reload only into the same data-parallel size. To change layouts,
every checkpoint also holds, per pipeline stage, each parameter's full fp32 master value and its
Adam moments under `LanguageModel` names. :func:`gather_master_state` builds them (collective over
the data- and tensor-parallel groups) and :func:`scatter_master_state` writes them back into any
engine: this rank's slice of each tensor goes wherever its optimizer keeps it
(`parallel/deepspeed_internals.py` knows where).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

if TYPE_CHECKING:  # DeepSpeed is imported only where an engine runs
    from megatron_ngpt.parallel.deepspeed_internals import MasterWeights

MOMENTS = ("exp_avg", "exp_avg_sq")


def _gather_tp(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return tensor
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    shards = [torch.empty_like(tensor) for _ in range(tp)]
    dist.all_gather(shards, tensor.contiguous(), group=ps.get_tensor_model_parallel_group())
    # With stride s each shard holds s chunks (e.g. [gate_r; up_r] for SwiGLU's fc1).
    chunks = [shard.chunk(stride, dim=dim) for shard in shards]
    return torch.cat([chunks[r][j] for j in range(stride) for r in range(tp)], dim=dim)


def tensor_parallel_slice(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This TP rank's shard of a full TP=1 tensor (the inverse of the TP gather)."""
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    rank = ps.get_tensor_model_parallel_rank()
    pieces = full.chunk(stride * tp, dim=dim)
    return torch.cat([pieces[j * tp + rank] for j in range(stride)], dim=dim)


def _optimizer_step_count(base: torch.optim.Optimizer) -> int:
    for state in base.state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def gather_master_state(masters: MasterWeights, named_params, with_moments: bool = True
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int] | None:
    """Full fp32 weights (and Adam moments) of this stage's parameters, with the given names.

    Collective over the data- and tensor-parallel groups. Returns ``(weights, moments, step)`` on
    the rank with DP rank 0 and TP rank 0 of each pipeline stage, None elsewhere. Moments are
    keyed ``"{name}/exp_avg"`` and ``"{name}/exp_avg_sq"``.
    """
    base, group = masters.base, masters.dp_group
    keep = ps.get_data_parallel_rank() == 0 and ps.get_tensor_model_parallel_rank() == 0
    weights: dict[str, torch.Tensor] = {}
    moments: dict[str, torch.Tensor] = {}
    for name, param in named_params:
        owned = masters.slice(param)
        shape = owned.shape if owned is not None else tuple(param.shape)
        sources = {"": None, **({m: m for m in MOMENTS} if with_moments else {})}
        for key in sources.values():
            flat = torch.zeros(int(torch.Size(shape).numel()), dtype=torch.float32,
                               device=param.device)
            if owned is not None and owned.numel:
                source = owned.owner if key is None else base.state.get(owned.owner, {}).get(key)
                if source is not None:
                    flat.narrow(0, owned.start, owned.numel).copy_(owned.view(source))
            if group is not None and dist.get_world_size(group) > 1:
                dist.all_reduce(flat, group=group)
            full = _gather_tp(flat.view(shape), param)
            if keep:
                target = weights if key is None else moments
                target[name if key is None else f"{name}/{key}"] = full.cpu()
    return (weights, moments, _optimizer_step_count(base)) if keep else None


@torch.no_grad()
def scatter_master_state(masters: MasterWeights, named_params, weights: dict[str, torch.Tensor],
                         moments: dict[str, torch.Tensor], step: int) -> None:
    """Write full weights and moments into this engine's masters, moments and model copies."""
    base = masters.base
    for name, param in named_params:
        if name not in weights:
            raise KeyError(f"the checkpoint has no weights for parameter {name}")
        local = tensor_parallel_slice(weights[name], param).reshape(-1)
        owned = masters.slice(param)
        if owned is not None and owned.numel:
            owner = owned.owner
            owned.view().copy_(local[owned.start : owned.start + owned.numel])
            state = base.state[owner]
            for key in MOMENTS:
                if key not in state:
                    state[key] = torch.zeros_like(owner, memory_format=torch.preserve_format)
                moment = moments.get(f"{name}/{key}")
                if moment is not None:
                    full = tensor_parallel_slice(moment, param).reshape(-1)
                    owned.view(state[key]).copy_(full[owned.start : owned.start + owned.numel])
            state["step"] = torch.tensor(float(step))
        if not masters.partitions_parameters:  # ZeRO-0/1/2 keep a full model copy on every rank
            param.data.copy_(local.view_as(param).to(param.dtype))
    masters.refresh_partitioned_parameters()
