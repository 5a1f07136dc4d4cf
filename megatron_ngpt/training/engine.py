"""The DeepSpeed engine around a built model: ZeRO data parallelism, the optimizer and its
schedule, with or without a pipeline, and nGPT's renormalization hooked into its step."""

from __future__ import annotations

import os
from dataclasses import dataclass

import deepspeed
import torch
from deepspeed.runtime.utils import clip_grad_norm_

from megatron_ngpt.config import Config
from megatron_ngpt.parallel.deepspeed_internals import HashedCheckpointWrites, MasterWeights
from megatron_ngpt.parallel.mpu import MegatronMPU
from megatron_ngpt.parallel.pipeline import check_rank_alignment
from megatron_ngpt.parallel.state import ParallelDims
from megatron_ngpt.training.optimizer import install_renormalization, param_groups


@dataclass
class Engine:
    """A started DeepSpeed engine and what the loop needs to know about it."""

    engine: deepspeed.DeepSpeedEngine
    module: torch.nn.Module  # LanguageModel or PipelineModule
    is_pipeline: bool
    grad_accumulation: int
    masters: MasterWeights  # where each parameter's master slice lives
    checkpoint_writes: HashedCheckpointWrites  # checksums of DeepSpeed's checkpoint files
    renormalization: str | None  # which master-weight layout nGPT normalizes, None for GPT-2


def deepspeed_config(cfg: Config, dims: ParallelDims) -> dict:
    t, p = cfg.training, cfg.parallel
    grad_accumulation = t.global_batch_size // (t.micro_batch_size * dims.dp)
    zero: dict = {"stage": p.zero_stage}
    if p.zero_stage == 3:
        # No always-gathered parameters: every matrix goes through the renormalized partitions.
        zero["stage3_param_persistence_threshold"] = 0
    config = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": grad_accumulation,
        "gradient_clipping": cfg.optimizer.clip_grad,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": t.precision != "fp32"},
    }
    if t.precision == "bf16" and p.zero_stage == 1:
        # DeepSpeed's BF16 optimizer: fp32 gradient accumulation and fp32 master partitions.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if t.precision == "bf16-params":
        # The ZeRO optimizer keeps its master partitions, gradients and Adam states in bf16:
        # torch's AdamW then updates bf16 values directly, rounding to nearest, as the paper's
        # reference code does (no stochastic rounding in DeepSpeed 0.19).
        config["bf16"].update(bf16_master_weights_and_grads=True, bf16_optimizer_states=True)
    if dims.pp > 1:
        config["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    return config


def _record_fp32_grad_norm(engine) -> None:
    """Without ZeRO or bf16 DeepSpeed clips fp32 gradients but drops their norm; keep it so
    `get_global_grad_norm()` reports it like every other configuration."""
    def clip_and_record():
        engine._global_grad_norm = clip_grad_norm_(
            parameters=engine.module.parameters(), max_norm=engine.gradient_clipping(),
            mpu=engine.mpu)

    engine.clip_fp32_gradients = clip_and_record


def build_engine(cfg: Config, module: torch.nn.Module, dims: ParallelDims) -> Engine:
    """Start DeepSpeed on `module` (a `LanguageModel`, or a `PipelineModule` when PP > 1). The
    learning rate is the trainer's to set before each step (`schedule.py`)."""
    is_pipeline = dims.pp > 1
    module.to(dims.device)
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(
        param_groups(module, opt.weight_decay), lr=opt.lr, betas=(opt.beta1, opt.beta2),
        eps=opt.eps, foreach=dims.device.type == "cuda",
    )
    os.environ.setdefault("LOCAL_RANK", str(dims.local_rank))  # DeepSpeed insists on it
    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=deepspeed_config(cfg, dims),
        mpu=None if is_pipeline else MegatronMPU(),
        dist_init_required=False,
    )
    if is_pipeline:
        check_rank_alignment(engine)
    _record_fp32_grad_norm(engine)
    masters = MasterWeights(ds_optimizer, list(module.parameters()), cfg.parallel.zero_stage,
                            cfg.training.precision, is_pipeline)
    renormalization = (install_renormalization(masters, module)
                       if cfg.model.arch == "ngpt" else None)
    return Engine(engine, module, is_pipeline, engine.gradient_accumulation_steps(), masters,
                  HashedCheckpointWrites(engine), renormalization)
