"""Checkpoints: exact resume, resume into other layouts, SIGKILL at any moment, damaged files."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_ngpt.training.checkpoint import (
    CheckpointError,
    load_consolidated,
    resolve_step,
    step_dir_name,
    verify,
)
from tests.distributed import REPO, free_port
from tests.tiny import TINY_RUN
from tests.training.trainer_runs import assert_close, losses, train

STEPS, HALF = 6, 3
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_dataset_prefix, sp_tokenizer_path):
    """An uninterrupted DP=2 ZeRO-1 nGPT run with checkpoints at steps 3 and 6."""
    run_dir = tmp_path_factory.mktemp("straight")
    train(2, run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path, "--train-iters",
          str(STEPS), "--zero-stage", "1", "--save-interval", str(HALF))
    return run_dir


def _copy_until(run_dir: Path, step: int, target: Path) -> Path:
    """A copy of `run_dir` as it was right after saving `step` (later checkpoints removed)."""
    shutil.copytree(run_dir, target)
    root = target / "checkpoints"
    for child in root.glob("step_*"):
        if int(child.name.split("_")[1]) > step:
            shutil.rmtree(child)
    (root / "latest").write_text(step_dir_name(step))
    return target


def test_exit_interval_then_resume_is_exact(straight, tmp_path, tiny_dataset_prefix,
                                            sp_tokenizer_path):
    args = ("ngpt", tiny_dataset_prefix, sp_tokenizer_path, "--train-iters", str(STEPS),
            "--zero-stage", "1")
    train(2, tmp_path, *args, "--exit-interval", str(HALF))
    assert max(losses(tmp_path)) == HALF
    proc = train(2, tmp_path, *args)
    assert f"resumed from {tmp_path / 'checkpoints' / step_dir_name(HALF)}" in proc.stderr
    assert_close(losses(tmp_path), losses(straight), rel=1e-6)


@pytest.mark.parametrize("layout", {
    "dp1-zero0": (1, ["--zero-stage", "0"]),
    "dp1-zero3": (1, ["--zero-stage", "3"]),
    "tp2": (2, ["--tensor-model-parallel-size", "2", "--zero-stage", "1"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"]),
}.items(), ids=lambda item: item[0])
def test_resume_into_another_layout(layout, straight, tmp_path, tiny_dataset_prefix,
                                    sp_tokenizer_path):
    _, (ranks, flags) = layout
    run_dir = _copy_until(straight, HALF, tmp_path / "run")
    proc = train(ranks, run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path,
                 "--train-iters", str(STEPS), *flags)
    assert "layout-independent fp32 state" in proc.stderr
    assert_close(losses(run_dir), losses(straight), rel=1e-4)


def _trainer_command(run_dir: Path, data: str, tokenizer: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}",
            "-m", "megatron_ngpt.train", "--config", "configs/tiny/ngpt.yaml", *TINY_RUN,
            "--data-path", data, "--tokenizer-model", str(tokenizer), "--save", str(run_dir),
            "--log-interval", "1", "--device", "cpu", "--train-iters", str(STEPS),
            "--zero-stage", "1", "--save-interval", "1"]


def test_sigkill_at_a_random_moment_resumes_to_the_same_losses(straight, tmp_path,
                                                                tiny_dataset_prefix,
                                                                sp_tokenizer_path):
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 2.0)
    run_dir = tmp_path / "run"
    cmd = _trainer_command(run_dir, tiny_dataset_prefix, sp_tokenizer_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (run_dir / "checkpoints" / "latest").exists() and proc.poll() is None:
        assert time.time() < deadline, "the run never saved a checkpoint"
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    found = resolve_step(run_dir)
    assert found is not None, f"no usable checkpoint after SIGKILL (seed {seed})"
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=900)
    assert_close(losses(run_dir), losses(straight), rel=1e-6)


def test_damaged_checkpoints_are_detected_and_skipped(straight, tmp_path):
    run_dir = _copy_until(straight, STEPS, tmp_path / "run")
    root = run_dir / "checkpoints"
    newest = root / step_dir_name(STEPS)
    verify(newest)
    shard = next(newest.glob("zero_pp_rank_0_*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        verify(newest)
    assert resolve_step(run_dir) == (root / step_dir_name(HALF), HALF)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        resolve_step(run_dir, STEPS)
    with pytest.raises(CheckpointError, match="no checkpoint for step 5"):
        resolve_step(run_dir, 5)
    # A checkpoint interrupted before its marker: `latest` points past it, the older one is used.
    (newest / "COMPLETE").unlink()
    assert resolve_step(run_dir)[1] == HALF
    shutil.rmtree(root / step_dir_name(HALF))
    assert resolve_step(run_dir) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_consolidated(run_dir)


def test_consolidated_weights_are_the_full_model(straight):
    cfg, state, step = load_consolidated(straight)
    assert step == STEPS
    assert cfg.model.arch == "ngpt"
    assert state["embedding.word_embeddings.weight"].shape == (cfg.model.vocab_size,
                                                               cfg.model.hidden_size)
    norms = state["layers.0.layer.self_attention.linear_qkv.weight"].norm(dim=1)
    assert (norms - 1).abs().max() < 1e-5
