"""A token-budget sweep: one complete run per (model, budget), each with its own schedule.

The plan is data (a :class:`Sweep` of :class:`SweepRun`), written as a JSON manifest before
anything is launched, so that a sweep can be inspected, resumed (completed runs are skipped) and
analysed later by ``tools/plot_runs.py --sweep``. Run directories are stored relative to the
manifest, so a sweep folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_ngpt.analysis.tokens import token_label
from megatron_ngpt.config import load_config

MANIFEST_FILE = "sweep.json"
MANIFEST_VERSION = 1
# Trainer flags that change the tokens per step, and the config keys they set.
_STEP_SIZE_FLAGS = {"--seq-length": "data.seq_length",
                    "--global-batch-size": "training.global_batch_size"}

_BUDGET_ARGS = ("--train-iters", "training.train_iters", "training.train_tokens")


class SweepError(ValueError):
    """A sweep cannot be planned or its manifest read; the message says which input is wrong."""


@dataclass
class SweepRun:
    model: str
    budget: int  # tokens
    run_dir: str  # relative to the manifest's folder
    config: str
    overrides: list[str]
    train_iters: int  # what the trainer runs for `train_tokens`: budget / step size, rounded up
    warmup_steps: int
    job_id: str | None = None  # SLURM job, once submitted


@dataclass
class Sweep:
    models: list[str]
    budgets: list[int]
    root: Path  # the folder holding the manifest and the run directories
    extra_args: list[str] = field(default_factory=list)  # passed verbatim to every trainer
    runs: list[SweepRun] = field(default_factory=list)

    def run_path(self, run: SweepRun) -> Path:
        return self.root / run.run_dir

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE


def scaled_warmup(base_warmup: int, train_iters: int, max_fraction: float) -> int:
    """The base warmup, cut to `max_fraction` of a short run (GPT-2's 2000 steps would be most
    of a small budget and the runs would no longer compare schedules of the same shape)."""
    limit = int(max_fraction * train_iters)
    if base_warmup <= limit:
        return base_warmup
    return max(1, limit)


def split_trainer_args(extra_args: list[str]) -> tuple[list[str], list[str]]:
    """(`key=value` overrides, flags): the trainer takes overrides only right after --config."""
    overrides = [arg for arg in extra_args if "=" in arg and not arg.startswith("-")]
    return overrides, [arg for arg in extra_args if arg not in overrides]


def config_overrides(extra_args: list[str]) -> list[str]:
    """The `key=value` overrides and step-size flags in the trainer arguments, as overrides."""
    overrides = split_trainer_args(extra_args)[0]
    for i, arg in enumerate(extra_args):
        flag, _, value = arg.partition("=")
        if flag in _STEP_SIZE_FLAGS:
            if not value:
                if i + 1 >= len(extra_args):
                    raise SweepError(f"trainer argument {flag} needs a value")
                value = extra_args[i + 1]
            overrides.append(f"{_STEP_SIZE_FLAGS[flag]}={value}")
    return overrides


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
    for arg in extra_args:
        if arg.partition("=")[0] in _BUDGET_ARGS:
            raise SweepError(f"trainer argument {arg!r}: the sweep sets each run's length itself")
    if not 0 < max_warmup_fraction <= 1:
        raise SweepError(f"max warmup fraction {max_warmup_fraction} is not in (0, 1]")
    sweep = Sweep(list(models), sorted(budgets), Path(root).resolve(), extra_args)
    for model in models:
        if model not in base_configs:
            raise SweepError(f"no base config for model {model!r}")
        config_path = Path(base_configs[model])
        if not config_path.is_file():
            raise SweepError(f"base config for {model!r} not found: {config_path}")
        cfg = load_config(config_path, config_overrides(extra_args))
        tokens_per_step = cfg.training.global_batch_size * cfg.data.seq_length
        for budget in sweep.budgets:
            iters = -(-budget // tokens_per_step)  # the trainer rounds up to whole steps
            if budget < tokens_per_step:
                raise SweepError(f"budget {budget} tokens is less than one step of {model} "
                                 f"({tokens_per_step} tokens: global batch x sequence length)")
            warmup = scaled_warmup(cfg.optimizer.warmup_steps, iters, max_warmup_fraction)
            overrides = [f"training.train_tokens={budget}", "training.train_iters=0",
                         f"optimizer.warmup_steps={warmup}"]
            sweep.runs.append(SweepRun(model, budget, f"{model}_{token_label(budget)}",
                                       str(config_path.resolve()), overrides, iters, warmup))
    return sweep


def write_manifest(sweep: Sweep) -> Path:
    """Write the manifest atomically (a crash never leaves half a file)."""
    sweep.root.mkdir(parents=True, exist_ok=True)
    data = {"version": MANIFEST_VERSION, "models": sweep.models, "budgets": sweep.budgets,
            "extra_args": sweep.extra_args, "runs": [asdict(run) for run in sweep.runs]}
    fd, tmp = tempfile.mkstemp(dir=sweep.root, prefix=".sweep-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, sweep.manifest_path)
    return sweep.manifest_path


def load_manifest(path: str | Path) -> Sweep:
    """Read a manifest, given its path or the sweep folder that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise SweepError(f"{path}: no sweep manifest (written by tools/sweep.py)")
    try:
        data = json.loads(path.read_text())
        if data.get("version") != MANIFEST_VERSION:
            raise SweepError(f"{path}: manifest version {data.get('version')!r}, "
                             f"expected {MANIFEST_VERSION}")
        runs = [SweepRun(**run) for run in data["runs"]]
        return Sweep(data["models"], data["budgets"], path.parent, data["extra_args"], runs)
    except json.JSONDecodeError as err:
        raise SweepError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise SweepError(f"{path}: not a sweep manifest ({err!r})") from None
