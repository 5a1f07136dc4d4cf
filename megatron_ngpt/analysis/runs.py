"""Reading a finished (or running) training run back from its directory.

The trainer writes ``RUN_DIR/metrics.jsonl``, one JSON object per line: training entries carry
``loss``, validation entries ``val_loss``, both with ``step`` and ``tokens``.
``RUN_DIR/config.yaml`` is the resolved config, read here only for the architecture name.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


class RunError(ValueError):
    """A run directory or metrics file is missing or malformed; the message names file and line."""


@dataclass
class Curve:
    """A loss measured at increasing token counts."""

    steps: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def append(self, step: int, tokens: int, loss: float) -> None:
        self.steps.append(step)
        self.tokens.append(tokens)
        self.losses.append(loss)

    def __len__(self) -> int:
        return len(self.losses)


@dataclass
class Run:
    path: Path
    arch: str | None
    train: Curve
    val: Curve
    tokens_per_sec: list[float] = field(default_factory=list)  # per training entry that has it

    @property
    def median_tokens_per_sec(self) -> float | None:
        """Throughput without the first entry, which includes start-up and compilation."""
        speeds = self.tokens_per_sec[1:] or self.tokens_per_sec
        return statistics.median(speeds) if speeds else None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """Legend text: the directory name, with the architecture when the name does not say it."""
        if self.arch and self.arch not in self.name:
            return f"{self.name} ({self.arch})"
        return self.name

    @property
    def final_val(self) -> tuple[int, float] | None:
        """(tokens, validation loss) of the last validation, which ends a completed run."""
        if not self.val:
            return None
        return self.val.tokens[-1], self.val.losses[-1]


def _number(entry: dict, key: str, where: str, kind: type) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RunError(f"{where}: {key!r} must be a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise RunError(f"{where}: {key!r} must be a whole number, got {value!r}")
    return kind(value)


def read_metrics(path: Path) -> tuple[Curve, Curve, list[float]]:
    """(training curve, validation curve, tokens/s of training entries) from a metrics.jsonl;
    other entries and fields are ignored."""
    train, val, speeds = Curve(), Curve(), []
    with open(path) as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise RunError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(entry, dict):
                raise RunError(f"{where}: expected a JSON object, got {type(entry).__name__}")
            for key, curve in (("loss", train), ("val_loss", val)):
                if key not in entry:
                    continue
                loss = _number(entry, key, where, float)
                if not math.isfinite(loss):
                    raise RunError(f"{where}: {key} is {loss} (the run diverged)")
                curve.append(int(_number(entry, "step", where, int)),
                             int(_number(entry, "tokens", where, int)), loss)
            if "loss" in entry and "tokens_per_sec" in entry:
                speeds.append(_number(entry, "tokens_per_sec", where, float))
    return train, val, speeds


def read_arch(run_dir: Path) -> str | None:
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RunError(f"{path}: invalid YAML: {err}") from None
    model = config.get("model") if isinstance(config, dict) else None
    return model.get("arch") if isinstance(model, dict) else None


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise RunError(f"{run_dir}: no {METRICS_FILE} (not a run directory, or the run never "
                       "logged a step)")
    return Run(run_dir, read_arch(run_dir), *read_metrics(metrics))


def is_complete(run_dir: str | Path, train_iters: int) -> bool:
    """Whether the run logged a validation at (or after) its last iteration: it ran to the end."""
    metrics = Path(run_dir) / METRICS_FILE
    if not metrics.is_file():
        return False
    try:
        _, val, _ = read_metrics(metrics)
    except RunError:
        return False
    return bool(val) and val.steps[-1] >= train_iters
