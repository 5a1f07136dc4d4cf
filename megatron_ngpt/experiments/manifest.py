"""A sweep's manifest: the plan of its runs as data, written before anything is launched.

A sweep can then be inspected, resumed (completed runs are skipped) and analysed later by
``tools/plot_runs.py --sweep``. Run directories are stored relative to the manifest, so a sweep
folder can be moved as a whole.

Version 2 records, per run, the values of the sweep's axes (precision, context, learning rate),
its schedule and its role: a complete run (its own schedule to the end of its budget), a WSD
stable run, or a cooldown branch of one (`parent`, from the parent's checkpoint of step
`load_step`). Version 1 manifests (complete runs only, no axes) still load, their axes unknown.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_FILE = "sweep.json"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
COMPLETE, STABLE, COOLDOWN = "complete", "stable", "cooldown"  # a run's role
ROLES = (COMPLETE, STABLE, COOLDOWN)


class SweepError(ValueError):
    """A sweep cannot be planned or its manifest read; the message says which input is wrong."""


@dataclass
class SweepRun:
    model: str
    budget: int | None  # tokens asked for; None for a WSD stable run (no budget of its own)
    run_dir: str  # relative to the manifest's folder
    config: str
    overrides: list[str]
    train_iters: int  # the step the run ends at (`train_tokens` over the step size, rounded up)
    warmup_steps: int
    job_id: str | None = None  # SLURM job, once submitted
    # Version 2; None in a version 1 manifest.
    tokens: int | None = None  # tokens at the run's end: train_iters x tokens per step
    precision: str | None = None  # training.precision
    seq_length: int | None = None  # data.seq_length (the context)
    lr: float | None = None  # optimizer.lr, the peak rate
    schedule: str | None = None  # optimizer.lr_decay_style
    role: str = COMPLETE
    parent: str | None = None  # a cooldown's stable run (its run_dir)
    load_step: int | None = None  # the parent's step a cooldown starts from

    @property
    def group(self) -> tuple[str | None, int | None]:
        """The (precision, context) whose runs are compared with each other."""
        return self.precision, self.seq_length


@dataclass
class Sweep:
    models: list[str]
    budgets: list[int]
    root: Path  # the folder holding the manifest and the run directories
    extra_args: list[str] = field(default_factory=list)  # passed verbatim to every trainer
    runs: list[SweepRun] = field(default_factory=list)
    schedule: str = "cosine"  # "cosine": complete runs; "wsd": stable runs and cooldowns
    decay_fraction: float | None = None  # wsd only
    decay_shape: str | None = None  # wsd only

    def run_path(self, run: SweepRun) -> Path:
        return self.root / run.run_dir

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    def run_settings(self, run: SweepRun) -> list[str]:
        """The run's own config settings: its overrides and, for a cooldown, where it starts."""
        if run.parent is None:
            return list(run.overrides)
        return [*run.overrides, f"training.load={self.root / run.parent}",
                f"training.load_step={run.load_step}"]

    def trainer_args(self, run: SweepRun) -> list[str]:
        """The trainer's arguments for `run`: its config and settings, then the sweep's own
        arguments, then its run directory (later arguments win)."""
        return ["--config", run.config, *self.run_settings(run), *self.extra_args,
                "--save", str(self.run_path(run))]


def write_manifest(sweep: Sweep) -> Path:
    """Write the manifest atomically (a crash never leaves half a file)."""
    sweep.root.mkdir(parents=True, exist_ok=True)
    data = {"version": MANIFEST_VERSION, "models": sweep.models, "budgets": sweep.budgets,
            "schedule": sweep.schedule, "decay_fraction": sweep.decay_fraction,
            "decay_shape": sweep.decay_shape, "extra_args": sweep.extra_args,
            "runs": [asdict(run) for run in sweep.runs]}
    fd, tmp = tempfile.mkstemp(dir=sweep.root, prefix=".sweep-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, sweep.manifest_path)
    return sweep.manifest_path


def _run(data: dict, where: str) -> SweepRun:
    run = SweepRun(**data)
    if run.role not in ROLES:
        raise SweepError(f"{where}: role {run.role!r} is not one of {', '.join(ROLES)}")
    if (run.role == COOLDOWN) != (run.parent is not None and run.load_step is not None):
        raise SweepError(f"{where}: a cooldown run, and only one, has a parent and a load_step")
    return run


def load_manifest(path: str | Path) -> Sweep:
    """Read a manifest, given its path or the sweep folder that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise SweepError(f"{path}: no sweep manifest (written by tools/sweep.py)")
    try:
        data = json.loads(path.read_text())
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise SweepError(f"{path}: manifest version {version!r} is not one this tool reads "
                             f"({', '.join(map(str, READABLE_VERSIONS))}); a newer "
                             "megatron-ngpt wrote it")
        runs = [_run(run, f"{path}: run {i}") for i, run in enumerate(data["runs"])]
        if version == 1:
            return Sweep(data["models"], data["budgets"], path.parent, data["extra_args"], runs)
        return Sweep(data["models"], data["budgets"], path.parent, data["extra_args"], runs,
                     data["schedule"], data["decay_fraction"], data["decay_shape"])
    except json.JSONDecodeError as err:
        raise SweepError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (KeyError, TypeError, AttributeError) as err:
        raise SweepError(f"{path}: not a sweep manifest ({err!r})") from None
