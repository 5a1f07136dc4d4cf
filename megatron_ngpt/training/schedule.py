"""Learning-rate schedule: linear warmup, then cosine (or linear / constant) decay to `min_lr`.

The rate is a function of the run's position, set on the optimizer before every step, so it needs
no state of its own: a resumed run computes it from where the checkpoint left off. The position
is counted in steps; for a token budget it is the tokens consumed divided by the current step size,
so a run resumed with another batch size continues the same curve over tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_ngpt.config import Config, OptimizerConfig


def lr_at(position: float, opt: OptimizerConfig, total_steps: float) -> float:
    """The learning rate at `position` (steps done, 0-based) of a `total_steps` run."""
    if opt.warmup_steps and position < opt.warmup_steps:
        return opt.lr * (position + 1) / opt.warmup_steps
    if opt.lr_decay_style == "constant":
        return opt.lr
    decay_steps = max(1, total_steps - opt.warmup_steps)
    progress = min(1.0, (position - opt.warmup_steps) / decay_steps)
    if opt.lr_decay_style == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    return opt.min_lr + (opt.lr - opt.min_lr) * factor


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
