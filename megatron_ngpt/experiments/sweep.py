"""Planning a token-budget sweep: one complete run per (model, budget), each with its own schedule.

Each run's length comes from the run's configuration as the trainer will read it
(`arguments.parse_train_args` on the base config, the run's overrides and the sweep's trainer
arguments), so the planned steps are exactly the steps the trainer runs.
"""

from __future__ import annotations

from pathlib import Path

from megatron_ngpt.analysis.tokens import token_label
from megatron_ngpt.arguments import ordered_settings, parse_train_args
from megatron_ngpt.config import ConfigError
from megatron_ngpt.experiments.manifest import Sweep, SweepError, SweepRun

_LENGTH_KEYS = ("training.train_iters", "training.train_tokens")


def scaled_warmup(base_warmup: int, train_iters: int, max_fraction: float) -> int:
    """The base warmup, cut to `max_fraction` of a short run (GPT-2's 2000 steps would be most
    of a small budget and the runs would no longer compare schedules of the same shape)."""
    limit = int(max_fraction * train_iters)
    if base_warmup <= limit:
        return base_warmup
    return max(1, limit)


def _check_trainer_args(extra_args: list[str]) -> None:
    try:
        config, settings = ordered_settings(extra_args)
    except ConfigError as err:
        raise SweepError(f"trainer arguments: {err}") from None
    if config is not None:
        raise SweepError("trainer argument --config: the sweep takes each model's base config "
                         "from --base-config")
    for key, _ in settings:
        if key in _LENGTH_KEYS:
            raise SweepError(f"trainer argument {key}: the sweep sets each run's length itself")


def plan_sweep(
    models: list[str],
    budgets: list[int],
    base_configs: dict[str, Path],
    root: Path,
    extra_args: list[str] | None = None,
    max_warmup_fraction: float = 0.05,
) -> Sweep:
    """One run per (model, budget) with train_tokens = budget and a warmup that fits the run."""
    extra_args = list(extra_args or [])
    _check_trainer_args(extra_args)
    if not 0 < max_warmup_fraction <= 1:
        raise SweepError(f"max warmup fraction {max_warmup_fraction} is not in (0, 1]")
    sweep = Sweep(list(models), sorted(budgets), Path(root).resolve(), extra_args)
    for model in models:
        if model not in base_configs:
            raise SweepError(f"no base config for model {model!r}")
        config_path = Path(base_configs[model])
        if not config_path.is_file():
            raise SweepError(f"base config for {model!r} not found: {config_path}")
        for budget in sweep.budgets:
            length = [f"training.train_tokens={budget}", "training.train_iters=0"]
            cfg = parse_train_args(["--config", str(config_path), *length, *extra_args])
            if budget < cfg.tokens_per_step:
                raise SweepError(f"budget {budget} tokens is less than one step of {model} "
                                 f"({cfg.tokens_per_step} tokens: global batch x sequence length)")
            iters = cfg.total_steps()
            warmup = scaled_warmup(cfg.optimizer.warmup_steps, iters, max_warmup_fraction)
            sweep.runs.append(SweepRun(model, budget, f"{model}_{token_label(budget)}",
                                       str(config_path.absolute()),
                                       [*length, f"optimizer.warmup_steps={warmup}"], iters,
                                       warmup))
    return sweep
