"""Cooldown branches: a run that starts from a kept checkpoint of another run continues that
run's data order with its own (WSD) schedule; the kept checkpoint survives pruning."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from megatron_ngpt.arguments import parse_train_args
from megatron_ngpt.config import ConfigError
from megatron_ngpt.training.checkpoint import complete_steps
from megatron_ngpt.training.trainer import KEPT_DIR, Trainer
from tests.tiny import TINY_RUN
from tests.training.trainer_runs import after_resume, losses, train

STEP_TOKENS = 8 * 32  # TINY_RUN: global batch 8 x sequence 32
# The stable run is planned for 2000 steps (16000 samples: a few epochs of the tiny corpus, so
# that megatron-core's shuffle differs from that of a dataset built for a short run) and stops
# after 5; the branch is a 6-step WSD run whose decay starts at step 3.
PLANNED_SAMPLES = 2000 * 8


def _train(single_rank, run_dir: Path, prefix: str, tokenizer: Path, *settings: str) -> Trainer:
    cfg = parse_train_args([
        "--config", "configs/tiny/gpt2.yaml", *TINY_RUN, "--data-path", prefix,
        "--tokenizer-model", str(tokenizer), "--save", str(run_dir), "--log-interval", "1",
        "--device", "cpu", "--zero-stage", "0", "training.train_iters=0", "optimizer.lr=1e-3",
        "optimizer.warmup_steps=0", *settings])
    trainer = Trainer.build(cfg, single_rank)
    assert trainer.train() == 0
    return trainer


@pytest.fixture(scope="module")
def stable(single_rank, tmp_path_factory, tiny_dataset_prefix, sp_tokenizer_path) -> Path:
    run_dir = tmp_path_factory.mktemp("stable")
    _train(single_rank, run_dir, tiny_dataset_prefix, sp_tokenizer_path,
           f"training.train_tokens={2000 * STEP_TOKENS}", "optimizer.lr_decay_style=constant",
           f"data.train_dataset_samples={PLANNED_SAMPLES}", "training.keep_steps=[3]",
           "training.exit_interval=5", "training.save_interval=1", "training.keep_last=1")
    return run_dir


def _branch_settings(stable: Path, *extra: str) -> list[str]:
    return [f"training.train_tokens={6 * STEP_TOKENS}", "optimizer.lr_decay_style=wsd",
            "optimizer.decay_fraction=0.5", "optimizer.decay_shape=linear",
            f"training.load={stable}", "training.load_step=3", *extra]


def test_kept_checkpoint_survives_pruning(stable):
    assert complete_steps(stable / "checkpoints") == [5]  # keep_last=1 pruned 1 to 4
    assert complete_steps(stable / KEPT_DIR / "checkpoints") == [3]


def test_branch_continues_the_stable_runs_data_with_its_own_schedule(
        single_rank, stable, tmp_path, tiny_dataset_prefix, sp_tokenizer_path):
    branch = tmp_path / "branch"
    _train(single_rank, branch, tiny_dataset_prefix, sp_tokenizer_path,
           *_branch_settings(stable, f"data.train_dataset_samples={PLANNED_SAMPLES}"))
    start, branch_losses = after_resume(branch)
    assert start == 3 and sorted(branch_losses) == [4, 5, 6]
    # steps 4 and 5 see the stable run's weights, batches and (peak) rate: the same losses
    parent = losses(stable)
    for step in (4, 5):
        assert branch_losses[step] == pytest.approx(parent[step], rel=1e-6)
    # its rate decays linearly from the peak at step 4 (position 3) to 0 at position 6
    assert list(after_resume(branch, "lr")[1].values()) == pytest.approx([1e-3, 2e-3 / 3,
                                                                          1e-3 / 3])
    assert (branch / KEPT_DIR).exists() is False and complete_steps(branch / "checkpoints") == [6]


def test_branch_resumes_itself_once_it_has_checkpoints(
        single_rank, stable, tmp_path, tiny_dataset_prefix, sp_tokenizer_path):
    branch = tmp_path / "branch"
    settings = _branch_settings(stable, f"data.train_dataset_samples={PLANNED_SAMPLES}")
    _train(single_rank, branch, tiny_dataset_prefix, sp_tokenizer_path, *settings,
           "training.exit_interval=4")
    _train(single_rank, branch, tiny_dataset_prefix, sp_tokenizer_path, *settings)
    assert after_resume(branch)[0] == 4  # its own checkpoint, not the stable run's step 3


def test_run_resumes_from_a_kept_checkpoint_newer_than_its_rolling_ones(
        single_rank, stable, tmp_path, tiny_dataset_prefix, sp_tokenizer_path):
    run_dir = tmp_path / "stable"
    shutil.copytree(stable, run_dir)
    shutil.rmtree(run_dir / "checkpoints")  # as if it had crashed before its first rolling save
    _train(single_rank, run_dir, tiny_dataset_prefix, sp_tokenizer_path,
           f"training.train_tokens={4 * STEP_TOKENS}", "optimizer.lr_decay_style=constant",
           f"data.train_dataset_samples={PLANNED_SAMPLES}")
    start, resumed = after_resume(run_dir)
    assert start == 3 and resumed[4] == pytest.approx(losses(stable)[4], rel=1e-6)


def test_missing_branch_point_names_the_steps(single_rank, stable, tmp_path,
                                              tiny_dataset_prefix, sp_tokenizer_path):
    with pytest.raises(ConfigError, match=r"training.load_step: .*no checkpoint for step 2 "
                                          r"\(available: 5\); kept: 3"):
        _train(single_rank, tmp_path / "b", tiny_dataset_prefix, sp_tokenizer_path,
               *_branch_settings(stable, "training.load_step=2"))


def test_dataset_smaller_than_the_run_is_refused(single_rank, tmp_path, tiny_dataset_prefix,
                                                 sp_tokenizer_path):
    with pytest.raises(ConfigError, match="data.train_dataset_samples: 40 is fewer than the 48"):
        _train(single_rank, tmp_path / "b", tiny_dataset_prefix, sp_tokenizer_path,
               f"training.train_tokens={6 * STEP_TOKENS}", "data.train_dataset_samples=40")


@pytest.mark.slow
@pytest.mark.parametrize("arch, layout", [
    ("ngpt", ["--zero-stage", "3"]),  # DP=2, every parameter sharded
    ("gpt2", ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"]),
])
def test_branch_on_two_ranks(arch, layout, tmp_path, tiny_dataset_prefix, sp_tokenizer_path):
    """The same mechanics under another layout: the kept checkpoint is written and loaded by
    every rank, and the branch's first steps reproduce the stable run's."""
    common = ["training.train_iters=0", "optimizer.warmup_steps=0",
              f"data.train_dataset_samples={PLANNED_SAMPLES}", *layout]
    stable = tmp_path / "stable"
    train(2, stable, arch, tiny_dataset_prefix, sp_tokenizer_path, *common,
          f"training.train_tokens={2000 * STEP_TOKENS}", "optimizer.lr_decay_style=constant",
          "training.keep_steps=[3]", "training.exit_interval=5", "training.save_interval=0")
    branch = tmp_path / "branch"
    train(2, branch, arch, tiny_dataset_prefix, sp_tokenizer_path, *common,
          *_branch_settings(stable))
    start, branch_losses = after_resume(branch)
    assert start == 3 and sorted(branch_losses) == [4, 5, 6]
    for step in (4, 5):
        assert branch_losses[step] == pytest.approx(losses(stable)[step], rel=1e-5)
