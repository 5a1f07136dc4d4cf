"""The sbatch command of a sweep's run: its task count, and the launcher it points at."""

from pathlib import Path

import pytest

from megatron_ngpt.experiments import launch
from megatron_ngpt.experiments.launch import LaunchError, slurm_submission, submit_slurm
from megatron_ngpt.experiments.sweep import plan_sweep

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"


@pytest.fixture
def sweep(tmp_path):
    return plan_sweep(["ngpt"], [16 * 128], {"ngpt": TINY / "ngpt.yaml"}, tmp_path)


def test_jobs_ask_for_tasks_per_node_unless_the_options_give_a_task_count(sweep):
    cmd, _ = slurm_submission(sweep, sweep.runs[0], ["--nodes=2"], tasks_per_node=4)
    assert "--ntasks-per-node=4" in cmd and "--nodes=2" in cmd
    for given in (["--ntasks=8"], ["-n8"], ["-n", "8"], ["--ntasks-per-node=2"]):
        cmd, _ = slurm_submission(sweep, sweep.runs[0], given, tasks_per_node=4)
        assert not any(arg.startswith("--ntasks-per-node=4") for arg in cmd), cmd
        assert cmd[-1 - len(given):-1] == given


def test_a_missing_launcher_is_reported_even_in_a_dry_run(sweep, tmp_path, monkeypatch):
    lines = []
    submit_slurm(sweep, dry_run=True, log=lines.append)
    assert any(str(launch.SLURM_SCRIPT) in line for line in lines)
    missing = tmp_path / "site-packages" / "slurm" / "launch.sh"
    monkeypatch.setattr(launch, "SLURM_SCRIPT", missing)
    with pytest.raises(LaunchError, match=f"the SLURM launcher {missing} is missing"):
        submit_slurm(sweep, dry_run=True, log=lines.append)
