"""Planning a budget sweep, its manifest, and the commands it would launch."""

import shlex
from pathlib import Path

import pytest

from megatron_ngpt.experiments.launch import run_local, slurm_submission, submit_slurm
from megatron_ngpt.experiments.manifest import SweepError, load_manifest, write_manifest
from megatron_ngpt.experiments.sweep import plan_sweep, scaled_warmup

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
CONFIGS = {"ngpt": TINY / "ngpt.yaml", "gpt2": TINY / "gpt2.yaml"}
STEP = 16 * 128  # tiny configs: global batch 16 x 128 tokens


def test_one_run_per_model_and_budget_with_its_own_schedule(tmp_path):
    sweep = plan_sweep(["ngpt", "gpt2"], [400 * STEP, 100 * STEP], CONFIGS, tmp_path)
    assert [(r.model, r.train_iters) for r in sweep.runs] == [
        ("ngpt", 100), ("ngpt", 400), ("gpt2", 100), ("gpt2", 400)]
    assert len({r.run_dir for r in sweep.runs}) == 4
    gpt_small = sweep.runs[2]
    assert f"training.train_tokens={100 * STEP}" in gpt_small.overrides
    assert "training.train_iters=0" in gpt_small.overrides
    # GPT-2's 10 warmup steps are cut to 5% of a 100-step run, kept for 400 steps; nGPT has none
    assert gpt_small.warmup_steps == 5 and sweep.runs[3].warmup_steps == 10
    assert sweep.runs[0].warmup_steps == 0


def test_warmup_scaling():
    assert scaled_warmup(2000, 200_000, 0.05) == 2000
    assert scaled_warmup(2000, 1000, 0.05) == 50
    assert scaled_warmup(2000, 10, 0.05) == 1
    assert scaled_warmup(0, 10, 0.05) == 0


def test_trainer_arguments_that_change_the_step_size_are_used(tmp_path):
    sweep = plan_sweep(["gpt2"], [64 * STEP], CONFIGS, tmp_path,
                       ["--seq-length", "64", "training.global_batch_size=8", "--device", "cpu"])
    assert sweep.runs[0].train_iters == 64 * STEP // (64 * 8)


@pytest.mark.parametrize("models, budgets, extra, message", [
    (["bert"], [STEP], [], "no base config for model 'bert'"),
    (["ngpt"], [STEP - 1], [], "less than one step"),
    (["ngpt"], [STEP], ["--train-iters", "5"], "sets each run's length"),
    (["ngpt"], [STEP], ["training.train_tokens=5"], "sets each run's length"),
    (["ngpt"], [STEP], ["--train-tokens", "5"], "sets each run's length"),
    (["ngpt"], [STEP], ["--seq-length"], "expected a value"),
    (["ngpt"], [STEP], ["--no-such-flag"], "unknown argument"),
])
def test_bad_plans_are_refused(tmp_path, models, budgets, extra, message):
    with pytest.raises(SweepError, match=message):
        plan_sweep(models, budgets, CONFIGS, tmp_path, extra)


def test_manifest_round_trip_with_relative_run_dirs(tmp_path):
    sweep = plan_sweep(["ngpt", "gpt2"], [STEP, 2 * STEP], CONFIGS, tmp_path / "a",
                       ["--device", "cpu"])
    write_manifest(sweep)
    (tmp_path / "a").rename(tmp_path / "b")
    loaded = load_manifest(tmp_path / "b")
    assert loaded.runs == sweep.runs and loaded.extra_args == ["--device", "cpu"]
    assert loaded.run_path(loaded.runs[0]) == tmp_path / "b" / "ngpt_2048"
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["sweep.json"]  # no temp files


def test_broken_manifests_are_clear_errors(tmp_path):
    with pytest.raises(SweepError, match="no sweep manifest"):
        load_manifest(tmp_path)
    (tmp_path / "sweep.json").write_text("{\n  oops")
    with pytest.raises(SweepError, match=r"sweep.json:2: not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "sweep.json").write_text('{"version": 1}')
    with pytest.raises(SweepError, match="not a sweep manifest"):
        load_manifest(tmp_path)


def test_dry_run_prints_torchrun_commands(tmp_path):
    sweep = plan_sweep(["ngpt"], [STEP, 2 * STEP], CONFIGS, tmp_path,
                       ["--device", "cpu", "training.eval_iters=2"])
    lines = []
    assert run_local(sweep, nproc=2, dry_run=True, log=lines.append) == []
    assert len(lines) == 2
    argv = shlex.split(lines[1])
    assert argv[argv.index("-m", 3) + 1] == "megatron_ngpt.train"
    assert "--nproc_per_node=2" in argv
    # the run's length, then the sweep's trainer arguments, then the run directory
    config = argv.index("--config")
    assert argv[config + 2:] == [
        f"training.train_tokens={2 * STEP}", "training.train_iters=0",
        "optimizer.warmup_steps=0", "--device", "cpu", "training.eval_iters=2",
        "--save", str(tmp_path / "ngpt_4096")]
    assert not (tmp_path / "ngpt_2048").exists()


def test_slurm_submission_passes_the_launch_contract(tmp_path):
    sweep = plan_sweep(["gpt2"], [STEP], CONFIGS, tmp_path, ["--lr", "1e-3", "data.split=1,1"])
    cmd, env = slurm_submission(sweep, sweep.runs[0], ["--nodes=2"])
    assert cmd[:2] == ["sbatch", "--parsable"] and "--nodes=2" in cmd
    assert cmd[-1].startswith("--wrap=exec bash ") and cmd[-1].endswith("slurm/launch.sh")
    assert env["CONFIG"] == str(CONFIGS["gpt2"]) and env["RUN_DIR"] == str(tmp_path / "gpt2_2048")
    assert env["OVERRIDES"].split() == sweep.runs[0].overrides
    assert env["TRAIN_ARGS"] == "--lr 1e-3 data.split=1,1"
    lines = []
    submit_slurm(sweep, dry_run=True, log=lines.append)
    assert lines[0].startswith("CONFIG=") and "sbatch --parsable" in lines[0]
