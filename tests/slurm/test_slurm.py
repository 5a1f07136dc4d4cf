"""slurm/ngpt_0.5b_4k.sh submitted to a real one-node SLURM cluster (tests/slurm/start_cluster.sh),
running the real trainer on 2 CPU tasks: a run to completion, and a preemption that checkpoints,
requeues and resumes; a job submitted with no task count; and a budget sweep submitted through
`--launcher slurm`. Without slurmdbd the final job state comes from the jobcomp/filetxt log."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from megatron_ngpt.analysis.runs import is_complete
from megatron_ngpt.experiments.manifest import load_manifest
from tests.distributed import DIST_VARIABLES
from tests.tiny import TINY_RUN

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
START = REPO / "tests/slurm/start_cluster.sh"
JOBCOMP = Path("/var/spool/slurm-ngpt/jobcomp.txt")  # JobCompLoc in start_cluster.sh
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "DEADLINE", "BOOT_FAIL"}
UP_STATES = {"idle", "mixed", "allocated"}
JOB_TIMEOUT = 900
# What `submit` gives sbatch after the options every job gets (no GPU, 1 CPU per task, 20 min).
SCRIPT_ON_TWO_TASKS = ("--nodes=1", "--ntasks-per-node=2", "slurm/ngpt_0.5b_4k.sh")


def _cannot_start(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"SLURM cluster did not start in CI: {reason}")
    pytest.skip(f"no local SLURM cluster: {reason}")


def _cluster_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return state.returncode == 0 and bool(UP_STATES & set(state.stdout.split()))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """Starts the cluster unless it is up (CI starts it with .ci/slurm_setup.sh); stops only a
    cluster that it started."""
    if _cluster_is_up():
        yield
        return
    if os.geteuid() != 0:
        _cannot_start("start_cluster.sh needs root")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        _cannot_start("slurm-wlm is not installed and there is no apt-get to install it")
    started = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        _cannot_start(f"start_cluster.sh failed:\n{started.stdout[-2000:]}{started.stderr[-4000:]}")
    yield
    subprocess.run(["bash", str(START), "stop"], check=True, timeout=120)


@dataclass
class Job:
    job_id: int
    log: Path
    run_dir: Path
    jobcomp_offset: int  # records of this job start after this byte of JOBCOMP

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def records(self) -> list[dict[str, str]]:
        """This job's jobcomp records: one per requeue (state PENDING), then the final one."""
        if not JOBCOMP.exists():
            return []
        with JOBCOMP.open(errors="replace") as stream:
            stream.seek(self.jobcomp_offset)
            lines = stream.read().splitlines()
        fields = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines]
        return [f for f in fields if f.get("JobId") == str(self.job_id)]

    def wait(self, timeout: float = JOB_TIMEOUT) -> dict[str, str]:
        """The final jobcomp record, once the job has left the queue for good."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            final = [r for r in self.records() if r.get("JobState") in FINAL_STATES]
            if final:
                return final[-1]
            time.sleep(2)
        subprocess.run(["scancel", str(self.job_id)])
        raise AssertionError(f"job {self.job_id} not finished after {timeout} s; log tail:\n"
                             f"{self.output()[-6000:]}")

    def restarts(self) -> int:
        """Restart count from `scontrol show job` (kept MinJobAge seconds after the end)."""
        shown = subprocess.run(["scontrol", "show", "job", str(self.job_id)],
                               capture_output=True, text=True, check=True).stdout
        return int(re.search(r"Restarts=(\d+)", shown).group(1))

    def logged_steps(self) -> list[int]:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [row["step"] for row in rows if "loss" in row]


def _job_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}


def _jobcomp_offset() -> int:
    return JOBCOMP.stat().st_size if JOBCOMP.exists() else 0


@pytest.fixture
def submit(cluster: None, tmp_path: Path, tiny_dataset_prefix: str,
           sp_tokenizer_path: Path) -> Callable[..., Job]:
    """Submits slurm/ngpt_0.5b_4k.sh as the docs do, overriding its 8-GPU defaults for 2 CPU
    tasks and pointing it at the tiny config, the tiny data and this Python (or submits `job`:
    sbatch's last arguments instead)."""

    def _submit(train_args: str, job: tuple[str, ...] = SCRIPT_ON_TWO_TASKS) -> Job:
        run_dir, log = tmp_path / "run", tmp_path / "job.out"
        env = {**_job_environment(),
               "CONFIG": "configs/tiny/ngpt.yaml",
               "DATA_PATH": tiny_dataset_prefix, "TOKENIZER_MODEL": str(sp_tokenizer_path),
               "RUN_DIR": str(run_dir), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
               # no test split: the tiny corpus has too few documents for one
               "OVERRIDES": "data.split=90,10,0",
               "TRAIN_ARGS": f"--device cpu --global-batch-size 8 --micro-batch-size 4 "
                             f"--log-interval 1 --eval-interval 0 {train_args}"}
        offset = _jobcomp_offset()
        submitted = subprocess.run(
            ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20",
             f"--output={log}", *job],
            cwd=REPO, env=env, capture_output=True, text=True)
        assert submitted.returncode == 0, submitted.stderr
        return Job(int(submitted.stdout.strip().split(";")[0]), log, run_dir, offset)

    return _submit


def _latest_checkpoint_step(run_dir: Path) -> int:
    root = run_dir / "checkpoints"
    name = (root / "latest").read_text().strip()
    assert (root / name).is_dir(), f"latest points at a missing checkpoint {name}"
    return int(name.removeprefix("step_"))


def test_batch_job_trains_to_completion(submit: Callable[..., Job]) -> None:
    job = submit("--train-iters 6 --save-interval 3")
    final = job.wait()
    output = job.output()
    assert final["JobState"] == "COMPLETED", output[-6000:]
    assert "2 task(s)" in output and "DP=2" in output, output[-6000:]
    assert job.logged_steps() == [1, 2, 3, 4, 5, 6]
    assert _latest_checkpoint_step(job.run_dir) == 6


def test_a_job_without_a_task_count_runs_one_task_per_node(submit: Callable[..., Job]) -> None:
    """`sbatch --wrap` with no -n/--ntasks/--ntasks-per-node: SLURM sets no SLURM_NTASKS, srun
    starts one task per node, and launch.sh takes the world size from the step."""
    job = submit("--train-iters 2", ("--wrap=exec bash megatron_ngpt/slurm/launch.sh",))
    final = job.wait()
    output = job.output()
    assert final["JobState"] == "COMPLETED", output[-6000:]
    assert "1 task(s)" in output, output[-6000:]
    assert job.logged_steps() == [1, 2]


def test_preempted_job_saves_requeues_and_resumes(submit: Callable[..., Job]) -> None:
    total = 40
    job = submit(f"--train-iters {total} --save-interval 1000")
    deadline = time.monotonic() + JOB_TIMEOUT
    while not job.logged_steps():
        assert time.monotonic() < deadline, job.output()[-6000:]
        assert not job.records(), f"job ended before its first step:\n{job.output()[-6000:]}"
        time.sleep(0.5)
    # What SLURM sends --signal=USR1@180 before the time limit; it reaches the srun'd tasks.
    subprocess.run(["scancel", "--signal=USR1", str(job.job_id)], check=True)
    final = job.wait()
    output = job.output()
    assert final["JobState"] == "COMPLETED", output[-6000:]
    assert "requeueing job" in output and "restart 1" in output, output[-6000:]
    assert job.restarts() >= 1
    requeued = [r for r in job.records() if r.get("JobState") == "PENDING"]
    # The trainers exited 3 (preempted, saved), which their task shells report as a clean exit.
    assert requeued and requeued[0]["DerivedExitCode"] == "0:0"
    assert not list(job.run_dir.glob(".preempted.*"))
    resumed = re.search(r"resumed from .*\(step (\d+)", output)
    assert resumed, output[-6000:]
    step = int(resumed.group(1))
    assert 0 < step < total
    assert (job.run_dir / "checkpoints" / f"step_{step:07d}").is_dir()
    # Every step trained and logged exactly once across the two starts.
    assert job.logged_steps() == list(range(1, total + 1))
    assert _latest_checkpoint_step(job.run_dir) == total


def _trainer_pid(job_id: int, rank: int) -> int | None:
    """The trainer process of `rank` in job `job_id` (its environment names both)."""
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"RANK={rank}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = set((proc / "environ").read_bytes().split(b"\0"))
        except (OSError, ValueError):
            continue
        if b"megatron_ngpt.train" in cmdline and b"python" in cmdline and wanted <= environ:
            return int(proc.name)
    return None


def test_crashed_rank_ends_the_job_at_once(submit: Callable[..., Job]) -> None:
    """A rank killed mid-run (as by the OOM killer) must not leave the others waiting in a
    collective until the time limit: the job fails promptly and is not requeued.

    On gloo the survivor would see the closed connection and fail by itself; with NCCL it blocks
    in the collective. Rank 0 is stopped (SIGSTOP) first to stand for that blocked rank, so only
    srun's kill-on-bad-exit can end the job."""
    job = submit("--train-iters 100000 --save-interval 100000")
    deadline = time.monotonic() + JOB_TIMEOUT
    while not job.logged_steps():
        assert time.monotonic() < deadline, job.output()[-6000:]
        assert not job.records(), f"job ended before its first step:\n{job.output()[-6000:]}"
        time.sleep(0.5)
    pids = [_trainer_pid(job.job_id, rank) for rank in (0, 1)]
    assert None not in pids, f"trainer processes not found: {pids}"
    os.kill(pids[0], signal.SIGSTOP)
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.monotonic()
    final = job.wait(timeout=300)
    output = job.output()
    assert final["JobState"] == "FAILED", output[-6000:]
    assert time.monotonic() - killed_at < 120, output[-6000:]
    assert job.restarts() == 0
    assert "srun exited with status" in output, output[-6000:]
    assert not list(job.run_dir.glob(".preempted.*"))


def test_sweep_jobs_run_to_completion(cluster: None, tmp_path: Path, tiny_dataset_prefix: str,
                                      sp_tokenizer_path: Path) -> None:
    """The documented sweep command with `--launcher slurm` and nothing about tasks: the launcher
    is found in the package and every job trains its budget to the end."""
    out, offset = tmp_path / "sweep", _jobcomp_offset()
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_ngpt.cli.sweep", "--models", "ngpt",
         "--budgets", "1K,2K", "--base-config", "configs/tiny", "--out", str(out),
         "--launcher", "slurm", "--sbatch-arg=--time=20", "--",
         *TINY_RUN, "data.split=90,10,0", "--device", "cpu", "--log-interval", "1",
         "--data-path", tiny_dataset_prefix, "--tokenizer-model", str(sp_tokenizer_path)],
        cwd=tmp_path, env={**_job_environment(), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sweep = load_manifest(out)
    assert len(sweep.runs) == 2 and all(run.job_id for run in sweep.runs)
    for run in sweep.runs:
        run_dir = sweep.run_path(run)
        job = Job(int(run.job_id), run_dir / f"slurm-{run.job_id}.out", run_dir, offset)
        final = job.wait()
        assert final["JobState"] == "COMPLETED", job.output()[-6000:]
        assert job.logged_steps() == list(range(1, run.train_iters + 1))
        assert is_complete(run_dir, run.train_iters)
