"""Learning-rate schedule: linear warmup, then cosine / linear / constant decay to `min_lr`, or
warmup-stable-decay (WSD).

The rate is a function of the run's position, set on the optimizer before every step, so it needs
no state of its own: a resumed run computes it from where the checkpoint left off. The position
is counted in steps; for a token budget it is the tokens consumed divided by the current step size,
so a run resumed with another batch size continues the same curve over tokens.

WSD (Hägele et al. 2024) holds the peak rate and decays only over the last
`optimizer.decay_fraction` of the run (`optimizer.decay_shape`: linear, 1-sqrt or cosine). Up to
the decay's start a WSD run's rate does not depend on its length, so one long run at the peak rate
(a `constant` schedule with the same warmup) passes through the state of every shorter WSD run at
that run's decay start: a short cooldown branch from a checkpoint there (see `decay_start_step`)
is that run, which is how `tools/sweep.py --schedule wsd` gets a token-budget sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_ngpt.config import Config, OptimizerConfig


def _decay_factor(progress: float, shape: str) -> float:
    """From 1 at the decay's start (progress 0) to 0 at its end (progress 1)."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_start(opt: OptimizerConfig, total_steps: float) -> float:
    """The position at which the rate starts to fall (the end of warmup unless WSD)."""
    if opt.lr_decay_style != "wsd":
        return float(opt.warmup_steps)
    return max(float(opt.warmup_steps), total_steps - opt.decay_fraction * total_steps)


def decay_start_step(opt: OptimizerConfig, total_steps: int) -> int:
    """The first step of a WSD run of `total_steps` whose rate may be below the peak: every
    earlier step has the peak rate (or the warmup's), so a cooldown branch starts from a
    checkpoint saved after this many steps."""
    return math.ceil(decay_start(opt, total_steps))


def lr_at(position: float, opt: OptimizerConfig, total_steps: float) -> float:
    """The learning rate at `position` (steps done, 0-based) of a `total_steps` run."""
    if opt.warmup_steps and position < opt.warmup_steps:
        return opt.lr * (position + 1) / opt.warmup_steps
    if opt.lr_decay_style == "constant":
        return opt.lr
    start = decay_start(opt, total_steps)
    if position < start:
        return opt.lr
    progress = min(1.0, (position - start) / max(1.0, total_steps - start))
    shape = opt.decay_shape if opt.lr_decay_style == "wsd" else opt.lr_decay_style
    return opt.min_lr + (opt.lr - opt.min_lr) * _decay_factor(progress, shape)


@dataclass(frozen=True)
class RunPlan:
    """How long a run is, in steps of its current size, given where it starts."""

    total_steps: int  # the step the run ends at
    schedule_total: float  # the schedule's length in the same units as `position`
    tokens_per_step: int
    token_budget: bool  # the length is `training.train_tokens` rather than `train_iters`

    @classmethod
    def for_run(cls, cfg: Config, step: int = 0, tokens: int = 0) -> RunPlan:
        """The plan of a run that has done `step` steps and consumed `tokens` tokens."""
        t, size = cfg.training, cfg.tokens_per_step
        if t.train_iters:
            return cls(t.train_iters, t.train_iters, size, False)
        remaining = max(0, -(-(t.train_tokens - tokens) // size))
        return cls(step + remaining, tokens / size + remaining, size, True)

    def position(self, step: int, tokens: int) -> float:
        """Where a run that has done `step` steps and consumed `tokens` is in the schedule."""
        return tokens / self.tokens_per_step if self.token_budget else float(step)

    def lr(self, opt: OptimizerConfig, step: int, tokens: int) -> float:
        return lr_at(self.position(step, tokens), opt, self.schedule_total)


def set_lr(optimizer, opt: OptimizerConfig, lr: float) -> None:
    """Set every parameter group's rate (DeepSpeed's optimizer wrappers expose the groups)."""
    for group in optimizer.param_groups:
        group["lr"] = opt.lr * (lr / opt.lr)
