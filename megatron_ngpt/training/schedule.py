"""Learning-rate schedule: linear warmup, then cosine (or linear / constant) decay to `min_lr`."""

from __future__ import annotations

import math

from megatron_ngpt.config import OptimizerConfig


def lr_at(step: int, opt: OptimizerConfig, total_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based) of a `total_steps` run."""
    if opt.warmup_steps and step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    if opt.lr_decay_style == "constant":
        return opt.lr
    decay_steps = max(1, total_steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / decay_steps)
    if opt.lr_decay_style == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return opt.min_lr + (opt.lr - opt.min_lr) * factor


def lr_multiplier(opt: OptimizerConfig, total_steps: int):
    """`LambdaLR`'s factor function (the base LR of every group is `opt.lr`)."""
    return lambda step: lr_at(step, opt, total_steps) / opt.lr
