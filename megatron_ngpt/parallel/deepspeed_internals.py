"""The one module that reaches into DeepSpeed's private state, asserting what it finds.

Three things: where each parameter's master weight lives (`MasterWeights`), the files DeepSpeed's
checkpoint engine writes (`HashedCheckpointWrites`), and DeepSpeed's communication start without
its shared-memory op (`start_deepspeed_comm`).

nGPT's renormalization (`training/optimizer.py`) and the layout-independent checkpoint files
(`training/reshard.py`) both need, for every parameter, the slice of its master weight (and of its
Adam moments) that this rank owns. Which optimizer wrapper DeepSpeed builds, and so where that
slice lives, follows from the ZeRO stage and the precision (DeepSpeed 0.19's
`DeepSpeedEngine._do_optimizer_sanity_check`):

| ZeRO | precision | wrapper | master of a parameter (`Layout`) |
|---|---|---|---|
| 0 | fp32 | none (torch's AdamW) | the parameter itself (`parameters`) |
| 0 | bf16 | `FP16_UnfusedOptimizer` | a whole fp32 copy (`fp32-copies`) |
| 0 | bf16, pipeline | `BF16_Optimizer` | a fragment of a flat fp32 partition (`zero-partitions`) |
| 1 | bf16 | `BF16_Optimizer` (fp32 gradient accumulation) | same (`zero-partitions`) |
| 1, 2 | fp32, bf16 | `DeepSpeedZeroOptimizer` | same (`zero-partitions`) |
| 1, 2 | bf16-params | `DeepSpeedZeroOptimizer` | a fragment of a flat **bf16** partition |
| 3 | fp32, bf16 | `DeepSpeedZeroOptimizer_Stage3` | a slice per parameter (`zero3-partitions`) |
| 3 | bf16-params | `DeepSpeedZeroOptimizer_Stage3` | a slice of a **bf16** partition |

The masters' dtype is checked too: fp32, except bf16 for `bf16-params`.

`MasterWeights` checks at start-up that DeepSpeed built what this table says, with the private
attributes this module reads, and fails naming the DeepSpeed version otherwise: a silent fallback
would renormalize the bf16 copies (undone by the next step) and checkpoint the wrong state.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

from megatron_ngpt.training.digest import save_hashed

# Not `import deepspeed.comm.torch`: the package `deepspeed.comm` has an attribute `torch` (the
# torch package itself) that the import statement would return instead of the module.
deepspeed_comm_torch = importlib.import_module("deepspeed.comm.torch")

PARAMETERS, FP32_COPIES = "parameters", "fp32-copies"
ZERO_PARTITIONS, ZERO3_PARTITIONS = "zero-partitions", "zero3-partitions"
# Layout -> (wrapper classes it comes with, private attributes read here)
_LAYOUTS: dict[str, tuple[tuple[type, ...], tuple[str, ...]]] = {
    PARAMETERS: ((torch.optim.Optimizer,), ()),
    FP32_COPIES: ((FP16_UnfusedOptimizer,), ("fp16_groups", "fp32_groups")),
    ZERO_PARTITIONS: ((BF16_Optimizer, DeepSpeedZeroOptimizer), ("dp_process_group",)),
    ZERO3_PARTITIONS: ((DeepSpeedZeroOptimizer_Stage3,), (
        "dp_process_group", "fp16_groups", "fp32_partitioned_groups_flat", "grad_position",
        "get_param_id", "_reassign_or_swap_out_partitioned_parameters")),
}


class DeepSpeedLayoutError(RuntimeError):
    """DeepSpeed did not build the optimizer state this module knows how to read."""


def expected_layout(zero_stage: int, precision: str, pipeline: bool) -> str:
    """Where the masters live for this configuration (the table of the module docstring)."""
    if zero_stage == 3:
        return ZERO3_PARTITIONS
    if zero_stage > 0 or (precision != "fp32" and pipeline):
        return ZERO_PARTITIONS
    return FP32_COPIES if precision != "fp32" else PARAMETERS


def expected_master_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16-params" else torch.float32


@dataclass(frozen=True)
class MasterSlice:
    """Elements ``[start, start + numel)`` of a parameter's flattened (TP-local) master weight,
    stored at ``owner.view(-1)[offset : offset + numel]``; the base optimizer keys the Adam
    state of that memory by `owner`."""

    owner: torch.Tensor
    offset: int
    numel: int
    start: int
    shape: tuple[int, ...]  # the whole parameter's shape on this TP rank

    def view(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """This slice of `owner`, or of a tensor laid out like it (an Adam moment)."""
        source = self.owner if tensor is None else tensor
        return source.view(-1).narrow(0, self.offset, self.numel)


def _full_shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(param.ds_shape) if hasattr(param, "ds_shape") else tuple(param.shape)


class MasterWeights:
    """This rank's master slices of a DeepSpeed engine's parameters, and the hook point after
    the optimizer updated them (see the module docstring)."""

    def __init__(self, optimizer, params: Sequence[torch.Tensor], zero_stage: int,
                 precision: str, pipeline: bool) -> None:
        self.optimizer = optimizer
        self.layout = expected_layout(zero_stage, precision, pipeline)
        classes, attributes = _LAYOUTS[self.layout]
        missing = [a for a in attributes if not hasattr(optimizer, a)]
        if not isinstance(optimizer, classes) or missing or (
                self.layout == ZERO_PARTITIONS and not self._has_hp_mappings(params)):
            found = type(optimizer).__name__ + (f" without {', '.join(missing)}" if missing else "")
            raise DeepSpeedLayoutError(
                f"DeepSpeed {deepspeed.__version__}: ZeRO-{zero_stage} {precision}"
                f"{' with a pipeline' if pipeline else ''} should keep master weights as "
                f"{self.layout} ({' or '.join(c.__name__ for c in classes)}), found {found}. "
                "This DeepSpeed version is not supported (see setup.py for the tested range).")
        self.base: torch.optim.Optimizer = getattr(optimizer, "optimizer", optimizer)
        self._copies = {id(lp): hp for lp_group, hp_group in
                        zip(getattr(optimizer, "fp16_groups", []),
                            getattr(optimizer, "fp32_groups", []), strict=False)
                        for lp, hp in zip(lp_group, hp_group, strict=True)
                        } if self.layout == FP32_COPIES else {}
        self._zero3_dp_rank = (dist.get_rank(optimizer.dp_process_group)
                               if self.layout == ZERO3_PARTITIONS else 0)
        found = {s.owner.dtype for s in map(self.slice, params) if s is not None}
        expected = expected_master_dtype(precision)
        if precision == "bf16-params" and not isinstance(optimizer, (DeepSpeedZeroOptimizer,
                                                                     DeepSpeedZeroOptimizer_Stage3)):
            found = {type(optimizer).__name__}
        if found - {expected}:
            raise DeepSpeedLayoutError(
                f"DeepSpeed {deepspeed.__version__}: {precision} should keep {expected} master "
                f"weights, found {', '.join(sorted(map(str, found)))}. This DeepSpeed version "
                "is not supported (see setup.py for the tested range).")
        self.dtype = expected

    @staticmethod
    def _has_hp_mappings(params: Sequence[torch.Tensor]) -> bool:
        """ZeRO-1/2 and the BF16 optimizer give every parameter `_hp_mapping` (None where this
        rank's partition does not overlap it)."""
        return all(hasattr(p, "_hp_mapping") for p in params)

    @property
    def dp_group(self) -> dist.ProcessGroup | None:
        """The group whose ranks hold the other slices of a parameter (None: each rank holds
        whole masters)."""
        if self.layout in (ZERO_PARTITIONS, ZERO3_PARTITIONS):
            return self.optimizer.dp_process_group
        return None

    @property
    def partitions_parameters(self) -> bool:
        """ZeRO-3: model parameters are partitioned too, and refreshed from the masters."""
        return self.layout == ZERO3_PARTITIONS

    def slice(self, param: torch.Tensor) -> MasterSlice | None:
        """This rank's slice of `param`'s master; None where this rank holds none of it."""
        shape = _full_shape(param)
        if self.layout == ZERO3_PARTITIONS:
            opt = self.optimizer
            group, offset, count = opt.grad_position[opt.get_param_id(param)]
            start = self._zero3_dp_rank * count
            valid = max(0, min(count, param.ds_numel - start))
            return MasterSlice(opt.fp32_partitioned_groups_flat[group], offset, valid, start, shape)
        if self.layout == ZERO_PARTITIONS:
            mapping = param._hp_mapping
            if mapping is None:
                return None
            flats = getattr(self.optimizer, "single_partition_of_fp32_groups", None) or \
                self.optimizer.fp32_groups_flat_partition
            return MasterSlice(flats[mapping.param_group_index], mapping.hp_fragment_address.start,
                               mapping.hp_fragment_address.numel, mapping.lp_fragment_address.start,
                               shape)
        owner = self._copies.get(id(param), param)
        return MasterSlice(owner, 0, param.numel(), 0, shape)

    def after_update(self, hook: Callable[[list[torch.Tensor]], None],
                     params: Sequence[torch.Tensor]) -> None:
        """Call ``hook(updated)`` after every optimizer update of the masters and before
        DeepSpeed copies them into the model parameters; `updated` are those of `params` whose
        masters changed (ZeRO-3 updates sub-group by sub-group)."""
        if self.layout == ZERO3_PARTITIONS:
            opt = self.optimizer
            reassign = opt._reassign_or_swap_out_partitioned_parameters
            wanted = {id(p) for p in params}

            @functools.wraps(reassign)
            def hook_then_reassign(sub_group_id: int):
                hook([p for p in opt.fp16_groups[sub_group_id] if id(p) in wanted])
                return reassign(sub_group_id)

            opt._reassign_or_swap_out_partitioned_parameters = hook_then_reassign
            return
        step = self.base.step
        params = list(params)
        members = self._group_members()

        @functools.wraps(step)
        def step_then_hook(*args, **kwargs):
            result = step(*args, **kwargs)
            stepped = set().union(*(members[id(hp)] for group in self.base.param_groups
                                    for hp in group["params"]))
            hook([p for p in params if id(p) in stepped])
            return result

        self.base.step = step_then_hook

    def _group_members(self) -> dict[int, set[int]]:
        """Which model parameters (by id) each group of the base optimizer updates, by the id of
        each tensor the group steps (loading a checkpoint replaces the group dicts but keeps their
        tensors). DeepSpeed's ZeRO-1/2 optimizer steps its groups one at a time
        (`_optimizer_step` narrows `param_groups` to one group and copies that group's masters
        into the model right after), so the hook sees only the group just stepped; a second pass
        over the other groups' masters would round them again after their copy."""
        groups = self.base.param_groups
        if self.layout == ZERO_PARTITIONS:
            lp_groups = getattr(self.optimizer, "bit16_groups", None) or \
                self.optimizer.bf16_groups
        elif self.layout == FP32_COPIES:
            lp_groups = self.optimizer.fp16_groups
        else:
            lp_groups = [group["params"] for group in groups]
        if len(lp_groups) != len(groups):
            raise DeepSpeedLayoutError(
                f"DeepSpeed {deepspeed.__version__}: {type(self.optimizer).__name__} has "
                f"{len(lp_groups)} model parameter groups for {len(groups)} optimizer groups. "
                "This DeepSpeed version is not supported (see setup.py for the tested range).")
        return {id(hp): {id(p) for p in lp}
                for group, lp in zip(groups, lp_groups, strict=True) for hp in group["params"]}

    def refresh_partitioned_parameters(self) -> None:
        """ZeRO-3: rebuild the model's parameter partitions from the masters (after writing
        them directly)."""
        if self.partitions_parameters:
            for sub_group in range(len(self.optimizer.fp16_groups)):
                self.optimizer._reassign_or_swap_out_partitioned_parameters(sub_group)


class HashedCheckpointWrites:
    """DeepSpeed's checkpoint engine made to write through `digest.save_hashed`, so that every
    shard gets its checksum while it is written; `take` returns the digests by path.

    DeepSpeed 0.19 writes every checkpoint file through `engine.checkpoint_engine.save(state_dict,
    path)` (model states, ZeRO shards, pipeline layers); the default engine is a plain
    `torch.save` in the zip format, which `save_hashed` writes too."""

    def __init__(self, engine) -> None:
        checkpoint_engine = getattr(engine, "checkpoint_engine", None)
        if type(checkpoint_engine) is not TorchCheckpointEngine or \
                not getattr(checkpoint_engine, "zipfile_serialization", True):
            raise DeepSpeedLayoutError(
                f"DeepSpeed {deepspeed.__version__}: expected its default TorchCheckpointEngine "
                f"(zip serialization), found {type(checkpoint_engine).__name__}. This DeepSpeed "
                "version or checkpoint configuration is not supported.")
        self._digests: dict[str, dict] = {}
        checkpoint_engine.save = self._save

    def _save(self, state_dict, path: str) -> None:
        self._digests[str(path)] = save_hashed(state_dict, path)

    def take(self) -> dict[str, dict]:
        """Digests of the files written since the last call, by path."""
        digests, self._digests = self._digests, {}
        return digests


def start_deepspeed_comm(backend: str) -> None:
    """`deepspeed.init_distributed` over the already started default group, without building
    DeepSpeed's shared-memory all-reduce op.

    On a CPU accelerator DeepSpeed 0.19's `TorchBackend.__init__` calls
    `deepspeed.comm.torch.build_shm_op`, which probes every op builder and JIT-builds (or loads)
    the C++ op `deepspeed_shm_comm` into ~/.cache/torch_extensions. The op serves only
    `inference_all_reduce` (DeepSpeed's tensor-parallel inference); training's collectives go
    through torch.distributed (gloo). Its build folder is shared by every Python environment and
    its build.ninja names one environment's include path, so a start from any other environment
    rebuilds it (about 30 s). On GPU accelerators the op does not exist (the builder is None)."""
    if "build_shm_op" not in deepspeed_comm_torch.TorchBackend.__init__.__code__.co_names:
        raise DeepSpeedLayoutError(
            f"DeepSpeed {deepspeed.__version__}: TorchBackend no longer builds its shared-memory "
            "op through deepspeed.comm.torch.build_shm_op. This DeepSpeed version is not "
            "supported (see setup.py for the tested range).")
    with _patched(deepspeed_comm_torch, "build_shm_op", lambda: None):
        deepspeed.init_distributed(dist_backend=backend, verbose=False)


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
