"""Run directories as the trainer writes them, with losses that follow a known power law."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from megatron_ngpt.experiments.manifest import COOLDOWN, Sweep, SweepRun


def power_law(tokens: float, speedup: float = 1.0) -> float:
    """GPT's loss at `tokens`; with `speedup` s, a model that needs s times fewer tokens."""
    return 2.0 + 40.0 * (speedup * tokens) ** -0.3


def write_run(run_dir: Path, arch: str, train_iters: int, tokens_per_step: int = 1000,
              speedup: float = 1.0, eval_interval: int = 5, offset: float = 0.0,
              first_step: int = 1) -> Path:
    """A complete run: training entries every step, validation every `eval_interval` and at
    the end; the final loss is the power law at the run's budget plus `offset` (e.g. a worse
    learning rate). A run with `first_step` > 1 resumed from another run's checkpoint (a
    cooldown branch) and logged only from there."""
    run_dir.mkdir(parents=True, exist_ok=True)
    budget = train_iters * tokens_per_step
    lines = []
    if first_step > 1:
        lines.append({"event": "resumed", "step": first_step - 1,
                      "tokens": (first_step - 1) * tokens_per_step})
    for step in range(first_step, train_iters + 1):
        tokens = step * tokens_per_step
        # within a run the loss falls towards the budget's final loss
        loss = power_law(tokens, speedup) + 0.5 * (1 - step / train_iters) + offset
        lines.append({"step": step, "tokens": tokens, "loss": loss, "lr": 1e-3,
                      "grad_norm": 1.0, "tokens_per_sec": 1e4})
        if step % eval_interval == 0 or step == train_iters:
            val = power_law(budget, speedup) + offset if step == train_iters else loss + 0.05
            lines.append({"step": step, "tokens": tokens, "val_loss": val})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": {"arch": arch}}))
    return run_dir


def write_sweep_runs(sweep: Sweep, speedup: Callable[[SweepRun], float],
                     offset: Callable[[SweepRun], float] = lambda run: 0.0,
                     skip: Callable[[SweepRun], bool] = lambda run: False) -> None:
    """Every run of `sweep` (but those `skip` names) as if it had finished: each model's final
    losses follow `power_law` with the run's `speedup` plus its `offset`."""
    for run in sweep.runs:
        if skip(run):
            continue
        first = run.load_step + 1 if run.role == COOLDOWN else 1
        write_run(sweep.run_path(run), run.model, run.train_iters,
                  run.tokens // run.train_iters, speedup(run), offset=offset(run),
                  first_step=first)
