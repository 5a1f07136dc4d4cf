"""Off the happy path the trainer stops loudly and loses nothing: non-finite values, a second run on
one directory, Ctrl-C, preemption outside SLURM, a batch size changed under a token budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from megatron_ngpt.parallel.deepspeed_internals import DeepSpeedLayoutError, MasterWeights
from megatron_ngpt.training.checkpoint import complete_steps, load_consolidated
from megatron_ngpt.training.run_lock import RunLock
from megatron_ngpt.training.trainer import (
    DIVERGED_EXIT_CODE,
    INTERRUPTED_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
)
from tests.distributed import REPO, clean_env
from tests.training.trainer_runs import (
    after_resume,
    losses,
    records,
    train_one_process,
    trainer_args,
)

pytestmark = pytest.mark.slow


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def test_non_finite_training_stops_before_saving_it(tmp_path, tiny_dataset_prefix,
                                                    sp_tokenizer_path):
    """A learning rate of 1e30 blows GPT-2 up at step 2: the run stops with status 4 and a clear
    message, keeps its finite checkpoint, and writes strict JSON (null for the non-finite)."""
    run_dir = tmp_path / "run"
    proc = train_one_process(run_dir, "gpt2", tiny_dataset_prefix, sp_tokenizer_path,
                             "--train-iters", "6", "--lr", "1e30", "--save-interval", "1",
                             "training.keep_last=2")
    assert proc.returncode == DIVERGED_EXIT_CODE, proc.stderr[-3000:]
    assert "stopped without saving" in proc.stderr and "Traceback" not in proc.stderr
    logged = records(run_dir)  # parses as strict JSON
    last = logged[-1]
    assert last["nonfinite"] and all(last[key] is None for key in last["nonfinite"])
    steps = complete_steps(run_dir / "checkpoints")
    assert steps and max(steps) < last["step"]
    _, state, _ = load_consolidated(run_dir)
    assert all(torch.isfinite(tensor).all() for tensor in state.values())


def test_a_second_run_on_one_directory_is_refused(tmp_path, tiny_dataset_prefix,
                                                   sp_tokenizer_path):
    run_dir = tmp_path / "run"
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        proc = train_one_process(run_dir, "gpt2", tiny_dataset_prefix, sp_tokenizer_path,
                                 "--train-iters", "1")
    finally:
        lock.release()
    assert proc.returncode == 2
    assert "another run trains into this directory" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "checkpoints").exists()


def _start(run_dir: Path, prefix: str, tokenizer: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "megatron_ngpt.train",
         *trainer_args(run_dir, "gpt2", prefix, tokenizer, "--train-iters", "400", *flags)],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_saves_then_stops_and_the_run_resumes_there(tmp_path, tiny_dataset_prefix,
                                                             sp_tokenizer_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir, tiny_dataset_prefix, sp_tokenizer_path, "--save-interval", "1000")
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc,
              "three logged steps")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == INTERRUPTED_EXIT_CODE, err[-3000:]
    saved = complete_steps(run_dir / "checkpoints")
    assert saved == [max(losses(run_dir))]  # the step it stopped at, although no save was due
    proc = train_one_process(run_dir, "gpt2", tiny_dataset_prefix, sp_tokenizer_path,
                             "--train-iters", str(saved[0] + 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert after_resume(run_dir)[0] == saved[0]


def test_preemption_outside_slurm_exits_3_through_the_launcher(tmp_path, tiny_dataset_prefix,
                                                                 sp_tokenizer_path):
    """torchrun reports a worker's status 3 as 1; slurm/launch.sh's local branch restores it
    from the trainer's PREEMPTED marker."""
    run_dir = tmp_path / "run"
    args = trainer_args(run_dir, "gpt2", tiny_dataset_prefix, sp_tokenizer_path,
                        "--train-iters", "400")
    env = clean_env(CONFIG="configs/tiny/gpt2.yaml", RUN_DIR=str(run_dir), NPROC="1",
                    PYTHON=sys.executable, TRAIN_ARGS=" ".join(args[2:]))
    proc = subprocess.Popen(["bash", "slurm/launch.sh"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().strip(), proc, "a logged step")
    trainers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                if "megatron_ngpt.train" in p.cmdline() and "torch.distributed.run" not in
                " ".join(p.cmdline())]
    assert len(trainers) == 1
    trainers[0].send_signal(signal.SIGUSR1)  # as a scheduler would signal the trainer
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_CODE, out[-3000:]
    assert "preempted; checkpoint saved" in out
    assert complete_steps(run_dir / "checkpoints") == [max(losses(run_dir))]


def test_token_budget_counts_consumed_tokens_when_the_batch_changes(tmp_path,
                                                                    tiny_dataset_prefix,
                                                                    sp_tokenizer_path):
    """4096 tokens at 256 per step: stopped at 2048, resumed with a doubled batch, the run ends
    at 4096 tokens with its final validation, and its learning rate continues the same curve
    over tokens as the uninterrupted run's."""
    budget = ["--train-tokens", "4096", "--train-iters", "0", "--eval-iters", "1",
              "optimizer.lr_decay_style=linear", "optimizer.warmup_steps=0"]
    straight = tmp_path / "straight"
    assert train_one_process(straight, "gpt2", tiny_dataset_prefix, sp_tokenizer_path,
                             *budget).returncode == 0
    run_dir = tmp_path / "run"
    first = train_one_process(run_dir, "gpt2", tiny_dataset_prefix, sp_tokenizer_path, *budget,
                              "--exit-interval", "8")
    assert first.returncode == 0, first.stderr[-3000:]
    second = train_one_process(run_dir, "gpt2", tiny_dataset_prefix, sp_tokenizer_path, *budget,
                               "--global-batch-size", "16")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed_at, lrs = after_resume(run_dir, "lr")
    assert resumed_at == 8
    tokens = {r["step"]: r["tokens"] for r in records(run_dir) if "loss" in r}
    assert max(tokens.values()) == 4096 and max(tokens) == 8 + 4
    assert max(losses(run_dir, "val_loss")) == 12  # the final validation ran
    lr_by_tokens = {r["tokens"] - 256: r["lr"] for r in records(straight) if "lr" in r}
    for step, lr in lrs.items():  # logged lr is the one the step used, at its starting tokens
        assert lr == pytest.approx(lr_by_tokens[tokens[step] - 512], rel=1e-12)


def test_masters_layout_is_asserted_naming_the_deepspeed_version():
    import deepspeed

    with pytest.raises(DeepSpeedLayoutError, match=rf"DeepSpeed {deepspeed.__version__}: ZeRO-3"):
        MasterWeights(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1), [], 3,
                      "bf16", False)
    with pytest.raises(DeepSpeedLayoutError, match="ZeRO-0 bf16 should keep master weights as "
                                                   "fp32-copies"):
        MasterWeights(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1), [], 0,
                      "bf16", False)
