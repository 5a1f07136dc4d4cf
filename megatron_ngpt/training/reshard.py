"""Layout-independent master state: fp32 weights and Adam moments as full TP=1 tensors.

DeepSpeed's own checkpoints reload only into the same data-parallel size. To change layouts,
every checkpoint also holds, per pipeline stage, each parameter's full fp32 master value and its
Adam moments under `LanguageModel` names. :func:`gather_master_state` builds them (collective over
the data- and tensor-parallel groups) and :func:`scatter_master_state` writes them back into any
engine: this rank's slice of each tensor goes into wherever its optimizer keeps it.

Where the fp32 master of a parameter lives (see also `optimizer.py`):
ZeRO-0: the parameter itself (fp32) or its whole fp32 copy (bf16); ZeRO-1/2 and the BF16
optimizer: a fragment of a flat
partition (``_hp_mapping``); ZeRO-3: a per-parameter slice found via ``grad_position``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_ngpt.training.optimizer import master_copies

MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class _Slot:
    """This rank's part of one parameter's master: elements [start, start + numel) of it."""

    owner: torch.Tensor  # the tensor the base optimizer keys its state by
    offset: int  # where the part starts in `owner` (flattened)
    numel: int
    start: int  # where the part starts in the (TP-local) parameter (flattened)

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(-1).narrow(0, self.offset, self.numel)


def _full_shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(param.ds_shape) if hasattr(param, "ds_shape") else tuple(param.shape)


def _slot(optimizer, param: torch.Tensor, copies: dict[int, torch.Tensor]) -> _Slot | None:
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):  # ZeRO-3
        group, offset, count = optimizer.grad_position[optimizer.get_param_id(param)]
        start = dist.get_rank(optimizer.dp_process_group) * count
        valid = max(0, min(count, param.ds_numel - start))
        return _Slot(optimizer.fp32_partitioned_groups_flat[group], offset, valid, start)
    if hasattr(param, "_hp_mapping"):  # ZeRO-1/2, BF16 optimizer
        mapping = param._hp_mapping
        if mapping is None:
            return None
        flats = getattr(optimizer, "single_partition_of_fp32_groups", None) or \
            optimizer.fp32_groups_flat_partition
        return _Slot(flats[mapping.param_group_index], mapping.hp_fragment_address.start,
                     mapping.hp_fragment_address.numel, mapping.lp_fragment_address.start)
    # ZeRO-0: the parameter is the master (fp32) or has a whole fp32 copy (bf16).
    return _Slot(copies.get(id(param), param), 0, param.numel(), 0)


def _dp_group(optimizer):
    return getattr(optimizer, "dp_process_group", None)


def _base(optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)


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


def gather_master_state(optimizer, named_params, with_moments: bool = True
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int] | None:
    """Full fp32 weights (and Adam moments) of this stage's parameters, with the given names.

    Collective over the data- and tensor-parallel groups. Returns ``(weights, moments, step)`` on
    the rank with DP rank 0 and TP rank 0 of each pipeline stage, None elsewhere. Moments are
    keyed ``"{name}/exp_avg"`` and ``"{name}/exp_avg_sq"``.
    """
    base, group = _base(optimizer), _dp_group(optimizer)
    copies = master_copies(optimizer)
    keep = ps.get_data_parallel_rank() == 0 and ps.get_tensor_model_parallel_rank() == 0
    weights: dict[str, torch.Tensor] = {}
    moments: dict[str, torch.Tensor] = {}
    for name, param in named_params:
        slot = _slot(optimizer, param, copies)
        sources = {"": None, **({m: m for m in MOMENTS} if with_moments else {})}
        for key in sources.values():
            shape = _full_shape(param)
            flat = torch.zeros(int(torch.Size(shape).numel()), dtype=torch.float32,
                               device=param.device)
            if slot is not None and slot.numel:
                source = slot.owner if key is None else base.state.get(slot.owner, {}).get(key)
                if source is not None:
                    flat.narrow(0, slot.start, slot.numel).copy_(slot.view(source))
            if group is not None and dist.get_world_size(group) > 1:
                dist.all_reduce(flat, group=group)
            full = _gather_tp(flat.view(shape), param)
            if keep:
                target = weights if key is None else moments
                target[name if key is None else f"{name}/{key}"] = full.cpu()
    return (weights, moments, _optimizer_step_count(base)) if keep else None


@torch.no_grad()
def scatter_master_state(optimizer, named_params, weights: dict[str, torch.Tensor],
                         moments: dict[str, torch.Tensor], step: int) -> None:
    """Write full weights and moments into this engine's masters, moments and model copies."""
    base = _base(optimizer)
    copies = master_copies(optimizer)
    for name, param in named_params:
        if name not in weights:
            raise KeyError(f"the checkpoint has no weights for parameter {name}")
        local = tensor_parallel_slice(weights[name], param).reshape(-1)
        slot = _slot(optimizer, param, copies)
        if slot is not None and slot.numel:
            owner = slot.owner
            slot.view(owner).copy_(local[slot.start : slot.start + slot.numel])
            state = base.state[owner]
            for key in MOMENTS:
                if key not in state:
                    state[key] = torch.zeros_like(owner, memory_format=torch.preserve_format)
                moment = moments.get(f"{name}/{key}")
                if moment is not None:
                    full = tensor_parallel_slice(moment, param).reshape(-1)
                    slot.view(state[key]).copy_(full[slot.start : slot.start + slot.numel])
            state["step"] = torch.tensor(float(step))
        if not hasattr(param, "ds_id"):  # ZeRO-0/1/2 keep a full model copy on every rank
            param.data.copy_(local.view_as(param).to(param.dtype))
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):  # ZeRO-3: refresh the model shards
        for sub_group in range(len(optimizer.fp16_groups)):
            optimizer._reassign_or_swap_out_partitioned_parameters(sub_group)
