"""Starting the runs of a sweep: one after another on this machine, or as SLURM jobs.

Locally every run is ``torchrun -m megatron_ngpt.train``, in the manifest's order (a WSD stable
run before its cooldowns); on SLURM every run is one ``sbatch --wrap "bash slurm/launch.sh"`` (the
launcher shipped in the package) with a task count per node, whose job reads CONFIG, RUN_DIR,
OVERRIDES and TRAIN_ARGS from the environment (DATA_PATH and TOKENIZER_MODEL pass through from the
caller's environment), a cooldown waiting for its stable run's job (``--dependency=afterok``).
Complete runs are skipped; a dry run lists every run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from megatron_ngpt.analysis.runs import is_complete
from megatron_ngpt.analysis.tokens import format_tokens
from megatron_ngpt.experiments.manifest import Sweep, SweepRun, write_manifest

SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "launch.sh"


class LaunchError(RuntimeError):
    """A run failed to start or finished with an error; the message names the run."""


def local_command(sweep: Sweep, run: SweepRun, nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "megatron_ngpt.train", *sweep.trainer_args(run)]


def slurm_submission(sweep: Sweep, run: SweepRun, sbatch_args: list[str],
                     after: str | None = None, tasks_per_node: int = 1
                     ) -> tuple[list[str], dict[str, str]]:
    """The sbatch command (starting once job `after` succeeded, if given) and the environment
    variables slurm/launch.sh reads. The job asks for `tasks_per_node` tasks (ranks) per node
    unless `sbatch_args` give a task count."""
    run_dir = sweep.run_path(run)
    env = {"CONFIG": run.config, "RUN_DIR": str(run_dir),
           "OVERRIDES": " ".join(sweep.run_settings(run)),
           "TRAIN_ARGS": shlex.join(sweep.extra_args), "PYTHON": sys.executable}
    tasks = [] if _sets_task_count(sbatch_args) else [f"--ntasks-per-node={tasks_per_node}"]
    # --wrap, not the script itself: sbatch runs a spool copy of a script, from which
    # launch.sh could not find the repository.
    cmd = ["sbatch", "--parsable", f"--job-name=sweep-{run.run_dir}",
           f"--output={run_dir}/slurm-%j.out", *tasks, *sbatch_args,
           *([f"--dependency=afterok:{after}"] if after else []),
           f"--wrap=exec bash {shlex.quote(str(SLURM_SCRIPT))}"]
    return cmd, env


def summary(run: SweepRun) -> str:
    """One line naming the run: model, role, tokens and the values of its axes."""
    what = {"complete": f"{format_tokens(run.tokens or run.budget)} tokens",
            "stable": f"stable to {format_tokens(run.tokens)} tokens",
            "cooldown": f"{format_tokens(run.tokens)} tokens, cooldown from step {run.load_step} "
                        f"of {run.parent}"}[run.role]
    axes = [] if run.precision is None else [run.precision, f"context {run.seq_length}",
                                             f"lr {run.lr:g}"]
    return " ".join([run.model, *axes, what])


def _sets_task_count(sbatch_args: list[str]) -> bool:
    """Whether the options hold -n/--ntasks/--ntasks-per-node (`-n4`, `--ntasks=4`, `-n 4`)."""
    return any(arg.split("=")[0] in ("--ntasks", "--ntasks-per-node") or arg.startswith("-n")
               for arg in sbatch_args)


def describe(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """A shell line that does what `cmd` with `env` does (for --dry-run and reports)."""
    assignments = [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
    return " ".join(assignments + [shlex.join(cmd)])


def run_local(sweep: Sweep, nproc: int = 1, dry_run: bool = False,
              log: Callable[[str], None] = print) -> list[SweepRun]:
    """Run every incomplete run in turn; returns the runs that were started."""
    started = []
    for i, run in enumerate(sweep.runs, 1):
        head = f"[{i}/{len(sweep.runs)}] {summary(run)}"
        cmd = local_command(sweep, run, nproc)
        complete = is_complete(sweep.run_path(run), run.train_iters)
        if dry_run:
            log(f"# {head}: {'complete, would be skipped' if complete else 'would run'}")
            log(describe(cmd))
            continue
        if complete:
            log(f"{head}: complete, skipped ({run.run_dir})")
            continue
        log(f"{head}: {run.train_iters} steps, warmup {run.warmup_steps} -> {run.run_dir}")
        start = time.monotonic()
        result = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if result.returncode != 0:
            raise LaunchError(f"{head} failed with exit code {result.returncode}: {describe(cmd)}")
        log(f"{head}: done in {time.monotonic() - start:.0f}s")
        started.append(run)
    return started


def submit_slurm(sweep: Sweep, sbatch_args: list[str] | None = None, dry_run: bool = False,
                 log: Callable[[str], None] = print, tasks_per_node: int = 1) -> list[SweepRun]:
    """Submit every incomplete run as a job and record job ids in the manifest."""
    if not SLURM_SCRIPT.is_file():
        raise LaunchError(f"the SLURM launcher {SLURM_SCRIPT} is missing: megatron-ngpt ships it "
                          "in the package (megatron_ngpt/slurm/launch.sh); reinstall it")
    submitted = []
    jobs: dict[str, str] = {}  # run_dir -> job submitted now (a dry run's placeholder)
    for run in sweep.runs:
        complete = is_complete(sweep.run_path(run), run.train_iters)
        cmd, env = slurm_submission(sweep, run, list(sbatch_args or []),
                                    jobs.get(run.parent) if run.parent else None, tasks_per_node)
        if dry_run:
            log(f"# {summary(run)}: {'complete, would be skipped' if complete else 'would run'}")
            if not complete:
                jobs[run.run_dir] = f"<job of {run.run_dir}>"
            log(describe(cmd, env))
            continue
        if complete:
            log(f"{run.run_dir}: complete, skipped")
            continue
        sweep.run_path(run).mkdir(parents=True, exist_ok=True)
        result = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        if result.returncode != 0:
            raise LaunchError(f"sbatch for {run.run_dir} failed ({result.returncode}): "
                              f"{result.stderr.strip()}")
        run.job_id = jobs[run.run_dir] = result.stdout.strip().split(";")[0]
        write_manifest(sweep)
        log(f"{run.run_dir}: submitted job {run.job_id}")
        submitted.append(run)
    return submitted
