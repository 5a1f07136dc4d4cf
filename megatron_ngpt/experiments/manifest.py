"""A sweep's manifest: the plan of its runs as data, written before anything is launched.

A sweep can then be inspected, resumed (completed runs are skipped) and analysed later by
``tools/plot_runs.py --sweep``. Run directories are stored relative to the manifest, so a sweep
folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_FILE = "sweep.json"
MANIFEST_VERSION = 1


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

    def trainer_args(self, run: SweepRun) -> list[str]:
        """The trainer's arguments for `run`: its config and length, then the sweep's own
        arguments, then its run directory (later arguments win)."""
        return ["--config", run.config, *run.overrides, *self.extra_args,
                "--save", str(self.run_path(run))]


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
