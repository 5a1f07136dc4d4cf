"""Planning a token-budget sweep over models, budgets, precisions, contexts and learning rates.

Every (model, precision, context, learning rate) is a *family* of runs that share one data order
(`data.train_dataset_samples`: the training split of the family's longest run), so that each
budget trains on a prefix of the same samples. A family is either one complete run per budget,
each with its own schedule to the end (cosine: the paper's method), or, with WSD, one stable run
at the peak rate that keeps a checkpoint at every budget's decay start plus one short cooldown
branch per budget from there (Hägele et al. 2024).

A context changes the sequence length at a fixed number of tokens per step, as in the paper: the
global batch becomes tokens per step / sequence length and the micro-batch keeps about as many
tokens as before. Each run's length comes from the run's configuration as the trainer will read
it (`arguments.parse_train_args` on the base config, the run's overrides and the sweep's trainer
arguments), so the planned steps are exactly the steps the trainer runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_ngpt.analysis.tokens import format_tokens
from megatron_ngpt.arguments import ordered_settings, parse_train_args
from megatron_ngpt.config import Config, ConfigError
from megatron_ngpt.experiments.manifest import (
    COMPLETE,
    COOLDOWN,
    STABLE,
    Sweep,
    SweepError,
    SweepRun,
)
from megatron_ngpt.training.schedule import decay_start_step

_LENGTH_KEYS = ("training.train_iters", "training.train_tokens")
_ALWAYS_SET = ("data.train_dataset_samples",)
_AXIS_KEYS = {  # the keys an axis sets: refused among the trainer arguments when it is given
    "precisions": ("training.precision",),
    "contexts": ("data.seq_length", "training.global_batch_size", "training.micro_batch_size"),
    "lrs": ("optimizer.lr",),
}
_WSD_KEYS = ("optimizer.lr_decay_style", "optimizer.decay_fraction", "optimizer.decay_shape",
             "optimizer.warmup_steps", "training.keep_steps", "training.load",
             "training.load_step")


@dataclass(frozen=True)
class WsdSettings:
    """The decay of every cooldown branch: its share of the budget's steps and its shape."""

    decay_fraction: float = 0.2
    decay_shape: str = "1-sqrt"


def scaled_warmup(base_warmup: int, train_iters: int, max_fraction: float) -> int:
    """The base warmup, cut to `max_fraction` of a short run (GPT-2's 2000 steps would be most
    of a small budget and the runs would no longer compare schedules of the same shape)."""
    limit = int(max_fraction * train_iters)
    if base_warmup <= limit:
        return base_warmup
    return max(1, limit)


def lr_label(lr: float) -> str:
    """A short exact name for a learning rate: 0.001 -> ``1e-3``, 0.00025 -> ``2.5e-4``."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def parse_lrs(words: list[str], models: list[str]) -> dict[str, list[float]]:
    """``["ngpt=1e-3,2e-3", "gpt2=3e-4"]`` or ``["1e-3,2e-3"]`` (every model not named) ->
    model -> sorted distinct rates."""
    plain: list[float] | None = None
    named: dict[str, list[float]] = {}
    for word in words:
        model, _, values = word.rpartition("=")
        try:
            rates = sorted({float(v) for v in values.split(",") if v.strip()})
        except ValueError:
            raise SweepError(f"--lrs {word}: not a comma-separated list of numbers") from None
        if not rates or not all(0 < r < float("inf") for r in rates):
            raise SweepError(f"--lrs {word}: learning rates must be positive numbers")
        if not model:
            if plain is not None:
                raise SweepError(f"--lrs {word}: a second list for all models")
            plain = rates
        elif model not in models:
            raise SweepError(f"--lrs {word}: {model!r} is not one of --models "
                             f"({', '.join(models)})")
        elif model in named:
            raise SweepError(f"--lrs {word}: a second list for {model}")
        else:
            named[model] = rates
    return {m: named.get(m, plain) for m in models if named.get(m, plain)}


def _check_trainer_args(extra_args: list[str], refused: dict[str, str]) -> None:
    """`refused`: config key -> why the sweep sets it itself."""
    try:
        config, settings = ordered_settings(extra_args)
    except ConfigError as err:
        raise SweepError(f"trainer arguments: {err}") from None
    if config is not None:
        raise SweepError("trainer argument --config: the sweep takes each model's base config "
                         "from --base-config")
    for key, _ in settings:
        if key in refused:
            raise SweepError(f"trainer argument {key}: {refused[key]}")


def _read(config_path: Path, settings: list[str], world_size: int | None) -> Config:
    try:
        return parse_train_args(["--config", str(config_path), *settings], world_size)
    except ConfigError as err:
        raise SweepError(f"{config_path}: {err}") from None


def context_batch(cfg: Config, seq_length: int, data_parallel: int = 1) -> list[str]:
    """Settings that give `cfg` the context `seq_length` at the same tokens per step; the
    micro-batch keeps about as many tokens (the largest that divides the global batch over
    `data_parallel` ranks)."""
    t, tokens = cfg.training, cfg.tokens_per_step
    if tokens % seq_length:
        raise SweepError(f"context {seq_length}: {tokens} tokens per step (global batch "
                         f"{t.global_batch_size} x sequence {cfg.data.seq_length}) are not a "
                         f"multiple of {seq_length}")
    batch = tokens // seq_length
    micro = max(1, t.micro_batch_size * cfg.data.seq_length // seq_length)
    while micro and batch % (micro * data_parallel):
        micro -= 1
    if not micro:
        raise SweepError(f"context {seq_length}: the global batch of {batch} sequences does "
                         f"not divide over {data_parallel} data-parallel ranks")
    return [f"data.seq_length={seq_length}", f"training.global_batch_size={batch}",
            f"training.micro_batch_size={micro}"]


@dataclass
class _Family:
    """The runs of one (model, precision, context, learning rate)."""

    model: str
    config: Path
    settings: list[str]  # what the axes set
    base: Config  # the config with those settings and the trainer arguments
    world_size: int | None
    extra_args: list[str]

    @property
    def prefix(self) -> str:
        b = self.base
        return (f"{self.model}_{b.training.precision}_seq{b.data.seq_length}_"
                f"lr{lr_label(b.optimizer.lr)}")

    def overrides(self, tokens: int, settings: list[str]) -> list[str]:
        """A run's overrides: its length, the family's settings, then its own."""
        return [f"training.train_tokens={tokens}", "training.train_iters=0", *self.settings,
                *settings]

    def read(self, tokens: int, settings: list[str] = ()) -> Config:
        """A run's config exactly as the trainer reads it."""
        return _read(self.config, [*self.overrides(tokens, list(settings)), *self.extra_args],
                     self.world_size)

    def run(self, budget: int | None, tokens: int, name: str, settings: list[str], role: str,
            **fields) -> SweepRun:
        """The run of `tokens` (a budget) with `settings`, checked as the trainer reads it."""
        cfg = self.read(tokens, settings)
        steps = cfg.total_steps()
        return SweepRun(self.model, budget, name, str(self.config.absolute()),
                        self.overrides(tokens, settings), steps, cfg.optimizer.warmup_steps,
                        tokens=steps * cfg.tokens_per_step, precision=cfg.training.precision,
                        seq_length=cfg.data.seq_length, lr=cfg.optimizer.lr,
                        schedule=cfg.optimizer.lr_decay_style, role=role, **fields)


def _steps(family: _Family, budgets: list[int]) -> list[int]:
    steps = []
    for budget in budgets:
        cfg = family.read(budget)
        if budget < cfg.tokens_per_step:
            raise SweepError(f"budget {budget} tokens is less than one step of {family.model} "
                             f"({cfg.tokens_per_step} tokens: global batch x sequence length)")
        steps.append(cfg.total_steps())
    return steps


def _complete_runs(family: _Family, budgets: list[int], max_warmup_fraction: float
                   ) -> list[SweepRun]:
    steps = _steps(family, budgets)
    samples = max(steps) * family.base.training.global_batch_size
    runs = []
    for budget, iters in zip(budgets, steps, strict=True):
        warmup = scaled_warmup(family.base.optimizer.warmup_steps, iters, max_warmup_fraction)
        tokens = iters * family.base.tokens_per_step
        runs.append(family.run(budget, budget, f"{family.prefix}_{format_tokens(tokens)}",
                               [f"optimizer.warmup_steps={warmup}",
                                f"data.train_dataset_samples={samples}"], COMPLETE))
    return runs


def _wsd_runs(family: _Family, budgets: list[int], max_warmup_fraction: float,
              wsd: WsdSettings) -> list[SweepRun]:
    """One stable run (constant rate after the warmup) that keeps a checkpoint at every
    budget's decay start, and one cooldown per budget from that checkpoint."""
    steps = _steps(family, budgets)
    samples = max(steps) * family.base.training.global_batch_size
    warmup = scaled_warmup(family.base.optimizer.warmup_steps, min(steps), max_warmup_fraction)
    shared = [f"optimizer.warmup_steps={warmup}", f"data.train_dataset_samples={samples}"]
    decay = ["optimizer.lr_decay_style=wsd", f"optimizer.decay_fraction={wsd.decay_fraction}",
             f"optimizer.decay_shape={wsd.decay_shape}"]
    starts = []
    for budget, iters in zip(budgets, steps, strict=True):
        start = decay_start_step(family.read(budget, [*decay, *shared]).optimizer, iters)
        if not 1 <= start < iters:
            raise SweepError(f"budget {budget} tokens ({iters} steps of {family.model}): a decay "
                             f"of {wsd.decay_fraction} of the run starting at step {start} "
                             "leaves no stable or no decay phase")
        starts.append(start)
    stable = family.run(
        None, max(starts) * family.base.tokens_per_step, f"{family.prefix}_stable",
        ["optimizer.lr_decay_style=constant", *shared,
         f"training.keep_steps=[{','.join(map(str, sorted(set(starts))))}]"], STABLE)
    runs = [stable]
    for budget, iters, start in zip(budgets, steps, starts, strict=True):
        tokens = iters * family.base.tokens_per_step
        runs.append(family.run(budget, budget,
                               f"{family.prefix}_{format_tokens(tokens)}_cooldown",
                               [*decay, *shared], COOLDOWN, parent=stable.run_dir,
                               load_step=start))
    return runs


def plan_sweep(
    models: list[str],
    budgets: list[int],
    base_configs: dict[str, Path],
    root: Path,
    extra_args: list[str] | None = None,
    max_warmup_fraction: float = 0.05,
    *,
    precisions: list[str] | None = None,
    contexts: list[int] | None = None,
    lrs: dict[str, list[float]] | None = None,
    wsd: WsdSettings | None = None,
    world_size: int | None = None,
) -> Sweep:
    """Every (model, precision, context, learning rate) with every budget: complete runs, or
    with `wsd` a stable run and its cooldown branches. An axis that is not given takes each
    base config's value (after the trainer arguments); `lrs` may name only some models."""
    extra_args = list(extra_args or [])
    refused = {key: "the sweep sets each run's length itself" for key in _LENGTH_KEYS}
    refused |= {key: "the sweep sets it to share one data order" for key in _ALWAYS_SET}
    axes = {"precisions": precisions, "contexts": contexts, "lrs": lrs}
    for axis, keys in _AXIS_KEYS.items():
        if axes[axis]:
            refused |= {key: f"set by the sweep's --{axis}" for key in keys}
    if wsd is not None:
        refused |= {key: "set by the sweep for its WSD runs" for key in _WSD_KEYS}
    _check_trainer_args(extra_args, refused)
    if not 0 < max_warmup_fraction <= 1:
        raise SweepError(f"max warmup fraction {max_warmup_fraction} is not in (0, 1]")
    if wsd is not None and not 0 < wsd.decay_fraction < 1:
        raise SweepError(f"decay fraction {wsd.decay_fraction} is not in (0, 1)")
    sweep = Sweep(list(models), sorted(budgets), Path(root).resolve(), extra_args,
                  schedule="cosine" if wsd is None else "wsd",
                  decay_fraction=None if wsd is None else wsd.decay_fraction,
                  decay_shape=None if wsd is None else wsd.decay_shape)
    for model in models:
        if model not in base_configs:
            raise SweepError(f"no base config for model {model!r}")
        config_path = Path(base_configs[model])
        if not config_path.is_file():
            raise SweepError(f"base config for {model!r} not found: {config_path}")
        base = _read(config_path, extra_args, None)
        for precision in precisions or [base.training.precision]:
            for context in contexts or [base.data.seq_length]:
                for lr in (lrs or {}).get(model) or [base.optimizer.lr]:
                    settings = [f"training.precision={precision}"] if precisions else []
                    if contexts:
                        settings += context_batch(base, context, _data_parallel(base, world_size))
                    if (lrs or {}).get(model):
                        settings.append(f"optimizer.lr={lr}")
                    family = _Family(model, config_path, settings,
                                     _read(config_path, [*settings, *extra_args], world_size),
                                     world_size, extra_args)
                    sweep.runs += (_complete_runs(family, sweep.budgets, max_warmup_fraction)
                                   if wsd is None else
                                   _wsd_runs(family, sweep.budgets, max_warmup_fraction, wsd))
    _check_distinct(sweep.runs)
    return sweep


def _data_parallel(cfg: Config, world_size: int | None) -> int:
    p = cfg.parallel
    return (world_size or 1) // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size) \
        or 1


def _check_distinct(runs: list[SweepRun]) -> None:
    """Two budgets that train the same number of tokens would share a run directory."""
    seen: dict[str, SweepRun] = {}
    for run in runs:
        other = seen.setdefault(run.run_dir, run)
        if other is not run:
            raise SweepError(f"budgets {other.budget} and {run.budget} both train "
                             f"{format_tokens(run.tokens)} tokens ({run.train_iters} steps) in "
                             f"{run.run_dir}; give budgets at least a step apart")
