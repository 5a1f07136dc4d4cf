"""Process groups: torch.distributed from the torchrun / SLURM environment, then megatron-core.

Rank order is megatron-core's default (tensor fastest, then data, then pipeline), which is also
the order of DeepSpeed's `PipeModelDataParallelTopology`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_ngpt.log import ignore_cuda_advice
from megatron_ngpt.parallel.cpu_compat import apply_cpu_compat


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    rank: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    device: torch.device


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def select_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device=cuda but CUDA is not available on this machine")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0))


def init_distributed(tp: int = 1, pp: int = 1, device: str = "auto") -> ParallelDims:
    """Start torch.distributed (gloo on CPU, NCCL on GPU) and megatron-core's model parallel."""
    dev = select_device(device)
    if dev.type == "cpu":
        apply_cpu_compat()
        ignore_cuda_advice()
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if world == 1 and "MASTER_ADDR" not in os.environ:
            # A lone process needs no rendezvous, and leaves no variables for its children.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    # DeepSpeed keeps its own handle on the (already started) default group; it loads only here.
    from megatron_ngpt.parallel.deepspeed_internals import start_deepspeed_comm

    start_deepspeed_comm("nccl" if dev.type == "cuda" else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % (tp * pp):
        raise ValueError(f"world size {world} is not divisible by TP x PP = {tp} x {pp}")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        create_gloo_process_groups=dev.type == "cuda",
    )
    return ParallelDims(world, rank, local_rank, tp, pp, world // (tp * pp), dev)


def shutdown_distributed() -> None:
    """Tear down in the order that avoids the exit-time SIGABRT of a live process group."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
