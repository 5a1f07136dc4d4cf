"""Planning a sweep over budgets, precisions, contexts and learning rates (complete runs or WSD
branches), its manifest, and the commands it would launch."""

import json
import shlex
from pathlib import Path

import pytest

from megatron_ngpt.experiments.launch import run_local, slurm_submission, submit_slurm
from megatron_ngpt.experiments.manifest import (
    COMPLETE,
    COOLDOWN,
    STABLE,
    SweepError,
    load_manifest,
    write_manifest,
)
from megatron_ngpt.experiments.sweep import (
    WsdSettings,
    lr_label,
    parse_lrs,
    plan_sweep,
    scaled_warmup,
)
from tests.analysis.fake_runs import write_sweep_runs

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
CONFIGS = {"ngpt": TINY / "ngpt.yaml", "gpt2": TINY / "gpt2.yaml"}
STEP = 16 * 128  # tiny configs: global batch 16 x 128 tokens


def _setting(run, key: str) -> str:
    """The value a run's overrides give `key` (the last one)."""
    return [o.split("=", 1)[1] for o in run.overrides if o.startswith(key + "=")][-1]


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
    # the base configs' values, recorded; every budget trains on a prefix of one data order
    assert {(r.precision, r.seq_length, r.schedule, r.role) for r in sweep.runs} == {
        ("fp32", 128, "cosine", COMPLETE)}
    assert {r.lr for r in sweep.runs} == {2e-2, 3e-3}
    assert {_setting(r, "data.train_dataset_samples") for r in sweep.runs} == {str(400 * 16)}


def test_warmup_scaling():
    assert scaled_warmup(2000, 200_000, 0.05) == 2000
    assert scaled_warmup(2000, 1000, 0.05) == 50
    assert scaled_warmup(2000, 10, 0.05) == 1
    assert scaled_warmup(0, 10, 0.05) == 0


def test_trainer_arguments_that_change_the_step_size_are_used(tmp_path):
    sweep = plan_sweep(["gpt2"], [64 * STEP], CONFIGS, tmp_path,
                       ["--seq-length", "64", "training.global_batch_size=8", "--device", "cpu"])
    assert sweep.runs[0].train_iters == 64 * STEP // (64 * 8)
    assert sweep.runs[0].seq_length == 64


def test_every_combination_of_the_axes(tmp_path):
    sweep = plan_sweep(["ngpt", "gpt2"], [20 * STEP, 40 * STEP], CONFIGS, tmp_path,
                       precisions=["fp32", "bf16"], contexts=[64, 128],
                       lrs={"ngpt": [1e-2, 2e-2]})
    combos = {(r.model, r.precision, r.seq_length, r.lr, r.budget) for r in sweep.runs}
    assert len(sweep.runs) == len(combos) == 2 * 2 * 2 * 2 + 2 * 2 * 1 * 2
    assert {lr for m, _, _, lr, _ in combos if m == "gpt2"} == {3e-3}  # its config's
    for run in sweep.runs:  # the tokens per step stay 2048: the same steps at every context
        assert run.train_iters == run.budget // STEP and run.tokens == run.budget
        batch, micro = int(_setting(run, "training.global_batch_size")), \
            int(_setting(run, "training.micro_batch_size"))
        assert batch * run.seq_length == STEP
        assert micro * run.seq_length == 4 * 128  # the micro-batch keeps its 512 tokens
        assert _setting(run, "training.precision") == run.precision
    short = next(r for r in sweep.runs if r.seq_length == 64 and r.model == "ngpt")
    assert _setting(short, "data.train_dataset_samples") == str(40 * 32)
    assert len({r.run_dir for r in sweep.runs}) == len(sweep.runs)
    assert "ngpt_bf16_seq64_lr2e-2_81.92K" in {r.run_dir for r in sweep.runs}


def test_contexts_keep_tokens_per_step_or_say_why_not(tmp_path):
    with pytest.raises(SweepError, match=r"context 3000: 2048 tokens per step \(global batch 16 "
                                         r"x sequence 128\) are not a multiple of 3000"):
        plan_sweep(["ngpt"], [STEP], CONFIGS, tmp_path, contexts=[3000])
    # 4 data-parallel ranks: context 512 is 4 sequences (1 per rank), 1024 only 2
    sweep = plan_sweep(["ngpt"], [STEP], CONFIGS, tmp_path, contexts=[512], world_size=4)
    assert _setting(sweep.runs[0], "training.micro_batch_size") == "1"
    with pytest.raises(SweepError, match="context 1024: the global batch of 2 sequences does "
                                         "not divide over 4 data-parallel ranks"):
        plan_sweep(["ngpt"], [STEP], CONFIGS, tmp_path, contexts=[1024], world_size=4)


def test_unknown_precision_is_refused_by_the_config(tmp_path):
    with pytest.raises(SweepError, match="training.precision: 'fp8' is not one of"):
        plan_sweep(["ngpt"], [STEP], CONFIGS, tmp_path, precisions=["fp8"])


def test_learning_rate_lists():
    assert parse_lrs(["ngpt=2e-3,1e-3", "gpt2=3e-4"], ["ngpt", "gpt2"]) == {
        "ngpt": [1e-3, 2e-3], "gpt2": [3e-4]}
    assert parse_lrs(["1e-3,3e-3"], ["ngpt", "gpt2"]) == {"ngpt": [1e-3, 3e-3],
                                                          "gpt2": [1e-3, 3e-3]}
    assert parse_lrs(["1e-3", "ngpt=2e-2"], ["ngpt", "gpt2"]) == {"ngpt": [2e-2],
                                                                  "gpt2": [1e-3]}
    assert parse_lrs([], ["ngpt"]) == {}
    for words, message in ((["bert=1e-3"], "'bert' is not one of --models"),
                           (["ngpt=1e-3", "ngpt=2e-3"], "a second list for ngpt"),
                           (["ngpt=x"], "not a comma-separated list"),
                           (["ngpt=-1e-3"], "must be positive")):
        with pytest.raises(SweepError, match=message):
            parse_lrs(words, ["ngpt", "gpt2"])
    assert [lr_label(x) for x in (1e-3, 2.5e-4, 0.02, 3.0)] == ["1e-3", "2.5e-4", "2e-2", "3e0"]


@pytest.mark.parametrize("models, budgets, extra, axes, message", [
    (["bert"], [STEP], [], {}, "no base config for model 'bert'"),
    (["ngpt"], [STEP - 1], [], {}, "less than one step"),
    (["ngpt"], [STEP], ["--train-iters", "5"], {}, "sets each run's length"),
    (["ngpt"], [STEP], ["training.train_tokens=5"], {}, "sets each run's length"),
    (["ngpt"], [STEP], ["--train-tokens", "5"], {}, "sets each run's length"),
    (["ngpt"], [STEP], ["--seq-length"], {}, "expected a value"),
    (["ngpt"], [STEP], ["--no-such-flag"], {}, "unknown argument"),
    (["ngpt"], [STEP], ["data.train_dataset_samples=9"], {}, "share one data order"),
    (["ngpt"], [STEP], ["--precision", "bf16"], {"precisions": ["fp32"]}, "--precisions"),
    (["ngpt"], [STEP], ["--seq-length", "64"], {"contexts": [64]}, "--contexts"),
    (["ngpt"], [STEP], ["--global-batch-size", "8"], {"contexts": [64]}, "--contexts"),
    (["ngpt"], [STEP], ["--lr", "1e-3"], {"lrs": {"ngpt": [1e-3]}}, "--lrs"),
    (["ngpt"], [STEP], ["--load", "x"], {"wsd": WsdSettings()}, "WSD runs"),
    (["ngpt"], [STEP], ["optimizer.decay_fraction=0.5"], {"wsd": WsdSettings()}, "WSD runs"),
    (["ngpt"], [10 * STEP], [], {"wsd": WsdSettings(1.0)}, "decay fraction 1.0 is not in"),
    (["ngpt"], [4 * STEP], [], {"wsd": WsdSettings(0.1)}, "leaves no stable or no decay"),
    (["ngpt"], [64000, 65000], [], {}, "budgets 64000 and 65000 both train 65.54K tokens"),
])
def test_bad_plans_are_refused(tmp_path, models, budgets, extra, axes, message):
    with pytest.raises(SweepError, match=message):
        plan_sweep(models, budgets, CONFIGS, tmp_path, extra, **axes)


def test_run_folders_are_named_by_the_tokens_trained(tmp_path):
    """64K tokens do not fill whole steps of 2048: the run trains 32 steps, 65536 tokens, and
    its folder says so in the same words as the report's tables (format_tokens)."""
    sweep = plan_sweep(["ngpt"], [64_000], CONFIGS, tmp_path)
    (run,) = sweep.runs
    assert (run.budget, run.train_iters, run.tokens) == (64_000, 32, 65_536)
    assert run.run_dir == "ngpt_fp32_seq128_lr2e-2_65.54K"


def test_wsd_plan_is_a_stable_run_and_its_cooldowns(tmp_path):
    sweep = plan_sweep(["gpt2"], [40 * STEP, 80 * STEP, 160 * STEP], CONFIGS, tmp_path,
                       wsd=WsdSettings(0.25, "linear"), lrs={"gpt2": [1e-3, 3e-3]})
    assert [r.role for r in sweep.runs] == [STABLE, COOLDOWN, COOLDOWN, COOLDOWN] * 2
    stable, *cooldowns = sweep.runs[:4]
    # decay starts: the last quarter of 40, 80 and 160 steps
    assert [c.load_step for c in cooldowns] == [30, 60, 120]
    assert (stable.train_iters, stable.schedule, stable.budget) == (120, "constant", None)
    assert _setting(stable, "training.keep_steps") == "[30,60,120]"
    assert all(c.parent == stable.run_dir and c.schedule == "wsd" for c in cooldowns)
    assert [c.train_iters for c in cooldowns] == [40, 80, 160]
    for c in cooldowns:
        assert _setting(c, "optimizer.decay_fraction") == "0.25"
        assert _setting(c, "optimizer.decay_shape") == "linear"
    # one warmup (GPT-2's 10 steps, cut to 5% of the smallest budget) and one data order
    for run in sweep.runs[:4]:
        assert run.warmup_steps == 2
        assert _setting(run, "data.train_dataset_samples") == str(160 * 16)
    assert stable.run_dir == "gpt2_fp32_seq128_lr1e-3_stable"
    assert cooldowns[0].run_dir == "gpt2_fp32_seq128_lr1e-3_81.92K_cooldown"
    # a cooldown starts from its parent's step; on SLURM it waits for the parent's job
    args = sweep.trainer_args(cooldowns[0])
    assert args[args.index("--save") - 2:] == [
        f"training.load={tmp_path / stable.run_dir}", "training.load_step=30", "--save",
        str(tmp_path / cooldowns[0].run_dir)]
    cmd, env = slurm_submission(sweep, cooldowns[0], [], after="123")
    assert "--dependency=afterok:123" in cmd and "training.load_step=30" in env["OVERRIDES"]
    lines = []
    submit_slurm(sweep, dry_run=True, log=lines.append)
    assert f"--dependency=afterok:<job of {stable.run_dir}>" in lines[3]


def test_manifest_round_trip_with_relative_run_dirs(tmp_path):
    sweep = plan_sweep(["ngpt", "gpt2"], [2 * STEP, 4 * STEP], CONFIGS, tmp_path / "a",
                       ["--device", "cpu"], wsd=WsdSettings(0.5))
    write_manifest(sweep)
    (tmp_path / "a").rename(tmp_path / "b")
    loaded = load_manifest(tmp_path / "b")
    assert loaded.runs == sweep.runs and loaded.extra_args == ["--device", "cpu"]
    assert (loaded.schedule, loaded.decay_fraction, loaded.decay_shape) == ("wsd", 0.5, "1-sqrt")
    assert loaded.run_path(loaded.runs[0]) == tmp_path / "b" / "ngpt_fp32_seq128_lr2e-2_stable"
    assert f"training.load={tmp_path / 'b' / loaded.runs[0].run_dir}" in \
        loaded.trainer_args(loaded.runs[1])
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["sweep.json"]  # no temp files


def test_version_1_manifests_still_load(tmp_path):
    run = {"model": "ngpt", "budget": 2048, "run_dir": "ngpt_2048", "config": "c.yaml",
           "overrides": ["training.train_tokens=2048"], "train_iters": 1, "warmup_steps": 0,
           "job_id": None}
    (tmp_path / "sweep.json").write_text(json.dumps({
        "version": 1, "models": ["ngpt"], "budgets": [2048], "extra_args": [], "runs": [run]}))
    loaded = load_manifest(tmp_path)
    (only,) = loaded.runs
    assert (only.run_dir, only.role, only.precision, only.lr) == ("ngpt_2048", COMPLETE, None,
                                                                   None)
    assert loaded.schedule == "cosine" and loaded.trainer_args(only)[2] == run["overrides"][0]


def test_broken_manifests_are_clear_errors(tmp_path):
    with pytest.raises(SweepError, match="no sweep manifest"):
        load_manifest(tmp_path)
    (tmp_path / "sweep.json").write_text("{\n  oops")
    with pytest.raises(SweepError, match=r"sweep.json:2: not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "sweep.json").write_text('{"version": 1}')
    with pytest.raises(SweepError, match="not a sweep manifest"):
        load_manifest(tmp_path)
    (tmp_path / "sweep.json").write_text('{"version": 3}')
    with pytest.raises(SweepError, match=r"manifest version 3 is not one this tool reads \(1, 2\)"):
        load_manifest(tmp_path)


def test_dry_run_lists_every_run_and_rerunning_skips_finished_ones(tmp_path):
    sweep = plan_sweep(["ngpt"], [STEP, 2 * STEP], CONFIGS, tmp_path,
                       ["--device", "cpu", "training.eval_iters=2"])
    write_sweep_runs(sweep, lambda run: 1.0, skip=lambda run: run.budget == 2 * STEP)
    lines = []
    assert run_local(sweep, nproc=2, dry_run=True, log=lines.append) == []
    assert lines[0] == "# [1/2] ngpt fp32 context 128 lr 0.02 2.048K tokens: complete, " \
                       "would be skipped"
    assert lines[2] == "# [2/2] ngpt fp32 context 128 lr 0.02 4.096K tokens: would run"
    argv = shlex.split(lines[3])
    assert argv[argv.index("-m", 3) + 1] == "megatron_ngpt.train"
    assert "--nproc_per_node=2" in argv
    # the run's length and settings, then the sweep's trainer arguments, then the run directory
    config = argv.index("--config")
    assert argv[config + 2:] == [
        f"training.train_tokens={2 * STEP}", "training.train_iters=0",
        "optimizer.warmup_steps=0", "data.train_dataset_samples=32", "--device", "cpu",
        "training.eval_iters=2", "--save", str(tmp_path / "ngpt_fp32_seq128_lr2e-2_4.096K")]
    assert not (tmp_path / "ngpt_fp32_seq128_lr2e-2_4.096K").exists()
    # every run complete: nothing starts
    write_sweep_runs(sweep, lambda run: 1.0)
    lines.clear()
    assert run_local(sweep, log=lines.append) == []
    assert all(line.endswith("complete, skipped (" + run.run_dir + ")")
               for line, run in zip(lines, sweep.runs, strict=True))


def test_slurm_submission_passes_the_launch_contract(tmp_path):
    sweep = plan_sweep(["gpt2"], [STEP], CONFIGS, tmp_path, ["--lr", "1e-3", "data.split=1,1"])
    cmd, env = slurm_submission(sweep, sweep.runs[0], ["--nodes=2"])
    assert cmd[:2] == ["sbatch", "--parsable"] and "--nodes=2" in cmd
    assert cmd[-1].startswith("--wrap=exec bash ") and cmd[-1].endswith("slurm/launch.sh")
    assert not any(c.startswith("--dependency") for c in cmd)
    assert env["CONFIG"] == str(CONFIGS["gpt2"])
    assert env["RUN_DIR"] == str(tmp_path / "gpt2_fp32_seq128_lr1e-3_2.048K")
    assert env["OVERRIDES"].split() == sweep.runs[0].overrides
    assert env["TRAIN_ARGS"] == "--lr 1e-3 data.split=1,1"
    lines = []
    submit_slurm(sweep, dry_run=True, log=lines.append)
    assert lines[1].startswith("CONFIG=") and "sbatch --parsable" in lines[1]


def test_sweep_command_line_dry_run(tmp_path, capsys):
    from megatron_ngpt.cli.sweep import main

    assert main(["--budgets", "4K", "--base-config", str(TINY), "--out", str(tmp_path),
                 "--lrs", "ngpt=1e-2,2e-2", "gpt2=1e-3", "--contexts", "64,128",
                 "--schedule", "wsd", "--decay-fraction", "0.5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would run") == (2 + 1) * 2 * 2  # (stable + cooldown) x lrs x contexts
    assert "ngpt_fp32_seq64_lr2e-2_4.096K_cooldown" in out and not list(tmp_path.iterdir())
    assert main(["--budgets", "4K", "--base-config", str(TINY), "--out", str(tmp_path),
                 "--lrs", "bert=1e-3", "--dry-run"]) == 1
    assert "'bert' is not one of --models" in capsys.readouterr().err
