"""Checkpoints: exact resume, resume into other layouts, SIGKILL at any moment, damaged files.

Every resume test reads only what the resumed run wrote (the lines after its "resumed" record)
and checks where it resumed from: a run that silently started over, or did not run at all, fails.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from megatron_ngpt.cli import checkpoint_to_hf
from megatron_ngpt.training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_consolidated,
    resolve_step,
    step_dir_name,
    verify,
)
from tests.distributed import REPO, clean_env, free_port
from tests.training.trainer_runs import (
    after_resume,
    assert_close,
    losses,
    subset,
    train,
    train_one_process,
    trainer_args,
)

STEPS, HALF = 6, 3
LATER = range(HALF + 1, STEPS + 1)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_dataset_prefix, sp_tokenizer_path):
    """An uninterrupted DP=2 ZeRO-1 nGPT run with checkpoints at steps 3 and 6."""
    run_dir = tmp_path_factory.mktemp("straight")
    train(2, run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path, "--train-iters",
          str(STEPS), "--zero-stage", "1", "--save-interval", str(HALF))
    return run_dir


def _copy_until(run_dir: Path, step: int, target: Path) -> Path:
    """A copy of `run_dir` as it was right after saving `step` (later checkpoints removed; its
    metrics.jsonl still holds the later steps, which a resumed run must not be credited with)."""
    shutil.copytree(run_dir, target)
    root = target / "checkpoints"
    for child in root.glob("step_*"):
        if int(child.name.split("_")[1]) > step:
            shutil.rmtree(child)
    (root / "latest").write_text(step_dir_name(step))
    return target


def _flip_bytes(path: Path, count: int = 16) -> None:
    """Corrupt a file without changing its size (a size check cannot see it)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _assert_resumed(run_dir: Path, straight: Path, at: int, rel: float) -> None:
    step, resumed = after_resume(run_dir)
    assert step == at, f"resumed from step {step}, expected {at}"
    assert_close(resumed, subset(losses(straight), range(at + 1, STEPS + 1)), rel=rel)
    lr_step, lrs = after_resume(run_dir, "lr")
    assert_close(lrs, subset(losses(straight, "lr"), range(at + 1, STEPS + 1)), rel=1e-12)


def test_exit_interval_then_resume_is_exact(straight, tmp_path, tiny_dataset_prefix,
                                            sp_tokenizer_path):
    args = ("ngpt", tiny_dataset_prefix, sp_tokenizer_path, "--train-iters", str(STEPS),
            "--zero-stage", "1")
    train(2, tmp_path, *args, "--exit-interval", str(HALF))
    assert max(losses(tmp_path)) == HALF
    proc = train(2, tmp_path, *args)
    assert f"resumed from {tmp_path / 'checkpoints' / step_dir_name(HALF)}" in proc.stderr
    _assert_resumed(tmp_path, straight, HALF, rel=1e-6)


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
    _assert_resumed(run_dir, straight, HALF, rel=1e-4)


def test_sigkill_at_a_random_moment_resumes_to_the_same_losses(straight, tmp_path,
                                                                tiny_dataset_prefix,
                                                                sp_tokenizer_path):
    """Every process of a running job is killed at once (torchrun starts its workers in
    sessions of their own, so killing torchrun alone would leave them training)."""
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 2.0)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "megatron_ngpt.train",
           *trainer_args(run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path,
                         "--train-iters", str(STEPS), "--zero-stage", "1", "--save-interval", "1")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (run_dir / "checkpoints" / "latest").exists() and proc.poll() is None:
        assert time.time() < deadline, "the run never saved a checkpoint"
        time.sleep(0.05)
    time.sleep(delay)
    job = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    workers = [p for p in job[1:] if p.is_running()]
    for process in job:
        process.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(job, timeout=30)
    found = resolve_step(run_dir)
    assert found is not None, f"no usable checkpoint after SIGKILL (seed {seed})"
    subprocess.run(cmd, cwd=REPO, env=clean_env(), check=True, capture_output=True, timeout=900)
    if len(workers) == 2 and found[1] < STEPS:  # killed mid-run: it must resume from there
        _assert_resumed(run_dir, straight, found[1], rel=1e-6)
    assert_close(losses(run_dir), losses(straight), rel=1e-6)


def test_checkpoint_files_load_as_tensors_only(straight):
    """Our files need no unpickling of code: `weights_only=True` reads every one of them."""
    directory = straight / "checkpoints" / step_dir_name(STEPS)
    ours = [*directory.glob("model_fp32_pp*.pt"), *directory.glob("optim_fp32_pp*.pt"),
            *directory.glob("rng/*.pt")]
    assert len(ours) == 4  # weights, moments, two ranks' RNG states
    for path in ours:
        torch.load(path, weights_only=True)


def test_manifest_holds_a_checksum_of_every_file(straight, tmp_path):
    run_dir = _copy_until(straight, STEPS, tmp_path / "run")
    newest = run_dir / "checkpoints" / step_dir_name(STEPS)
    manifest = json.loads((newest / "COMPLETE").read_text())["files"]
    written = {str(p.relative_to(newest)) for p in newest.rglob("*.pt")}
    assert written <= manifest.keys() and "trainer_state.json" in manifest
    assert all(len(entry["xxh3_128"]) == 32 for entry in manifest.values())
    verify(newest)
    shard = next(newest.glob("zero_pp_rank_0_*optim_states.pt"))
    _flip_bytes(shard)
    with pytest.raises(CheckpointError, match="checksum differs"):
        verify(newest)


def test_damaged_deepspeed_shard_resumes_from_the_fp32_files(straight, tmp_path,
                                                               tiny_dataset_prefix,
                                                               sp_tokenizer_path):
    """The only checkpoint's ZeRO shard is corrupted (same size): the run resumes from its
    intact layout-independent files instead of starting over or loading garbage."""
    run_dir = _copy_until(straight, HALF, tmp_path / "run")
    shard = next((run_dir / "checkpoints" / step_dir_name(HALF)).glob("zero_pp_rank_1_*.pt"))
    _flip_bytes(shard)
    found = find_checkpoint(run_dir)
    assert found.step == HALF and not found.deepspeed_usable
    proc = train(2, run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path,
                 "--train-iters", str(STEPS), "--zero-stage", "1")
    assert shard.name in proc.stderr and "a DeepSpeed shard is damaged" in proc.stderr
    _assert_resumed(run_dir, straight, HALF, rel=1e-4)


def test_damaged_fp32_weights_fall_back_to_the_previous_checkpoint(straight, tmp_path, capsys):
    run_dir = _copy_until(straight, STEPS, tmp_path / "run")
    weights = run_dir / "checkpoints" / step_dir_name(STEPS) / "model_fp32_pp0.pt"
    _flip_bytes(weights)
    assert resolve_step(run_dir)[1] == HALF
    _, state, step = load_consolidated(run_dir)
    assert step == HALF
    with pytest.raises(CheckpointError, match="model_fp32_pp0.pt: checksum differs"):
        load_consolidated(run_dir, STEPS)
    # An export of the damaged step refuses, naming the file, instead of writing a wrong model.
    out = tmp_path / "hf"
    assert checkpoint_to_hf.main(["--checkpoint", str(run_dir), "--step", str(STEPS),
                                  "--output", str(out)]) == 1
    assert "model_fp32_pp0.pt" in capsys.readouterr().err and not out.exists()


def test_unusable_checkpoints_never_restart_from_scratch(straight, tmp_path, tiny_dataset_prefix,
                                                          sp_tokenizer_path):
    run_dir = _copy_until(straight, HALF, tmp_path / "run")
    (run_dir / "metrics.jsonl").unlink()
    _flip_bytes(run_dir / "checkpoints" / step_dir_name(HALF) / "model_fp32_pp0.pt")
    args = (run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path, "--train-iters", "1",
            "--zero-stage", "0")
    proc = train_one_process(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "has checkpoints but none is usable" in proc.stderr
    assert "model_fp32_pp0.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists()
    proc = train_one_process(*args, "training.ignore_checkpoints=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(losses(run_dir)) == [1]


def test_damaged_checkpoints_are_skipped_by_resolve(straight, tmp_path):
    run_dir = _copy_until(straight, STEPS, tmp_path / "run")
    root = run_dir / "checkpoints"
    with pytest.raises(CheckpointError, match="no checkpoint for step 5"):
        resolve_step(run_dir, 5)
    # A checkpoint interrupted before its marker: `latest` points past it, the older one is used.
    (root / step_dir_name(STEPS) / "COMPLETE").unlink()
    assert resolve_step(run_dir)[1] == HALF
    shutil.rmtree(root / step_dir_name(HALF))
    assert resolve_step(run_dir) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_consolidated(run_dir)


@pytest.mark.parametrize("change, field", [
    (["model.num_attention_heads=8"], "model.num_attention_heads"),
    (["model.ffn_hidden_size=256", "--zero-stage", "3"], "model.ffn_hidden_size"),
])
def test_resume_refuses_another_model(straight, tmp_path, tiny_dataset_prefix, sp_tokenizer_path,
                                      change, field):
    run_dir = _copy_until(straight, HALF, tmp_path / "run")
    config = (run_dir / "config.yaml").read_bytes()
    proc = train_one_process(run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path,
                             "--train-iters", str(STEPS), *change)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"config error: {field}: the checkpoint" in proc.stderr
    assert (run_dir / "config.yaml").read_bytes() == config  # written only after a resume
