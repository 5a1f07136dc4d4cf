"""What the trainer logs: strict JSON lines, and a Weights & Biases run written offline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megatron_ngpt.training.metrics import device_peak_tflops, json_safe
from tests.training.trainer_runs import losses, train_one_process


def test_non_finite_values_become_null_and_are_named():
    record = {"step": 3, "loss": math.nan, "grad_norm": math.inf, "lr": 1e-3}
    line = json.dumps(json_safe(record), allow_nan=False)
    assert json.loads(line) == {"step": 3, "loss": None, "grad_norm": None, "lr": 1e-3,
                                "nonfinite": ["loss", "grad_norm"]}
    assert json_safe({"step": 1, "loss": 2.5}) == {"step": 1, "loss": 2.5}


@pytest.mark.slow
def test_wandb_offline_run_writes_its_files(tmp_path, tiny_dataset_prefix, sp_tokenizer_path,
                                            monkeypatch):
    """Without WANDB_API_KEY the run goes to an offline wandb folder inside the run directory,
    holding the logged values (the file `wandb sync` uploads later) and the config."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    proc = train_one_process(run_dir, "gpt2", tiny_dataset_prefix, sp_tokenizer_path,
                             "--train-iters", "2", "logging.wandb=true",
                             "logging.wandb_run_name=offline-test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(losses(run_dir)) == [1, 2]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    history = next(offline[0].glob("run-*.wandb")).read_bytes()  # what `wandb sync` uploads
    # Every logged loss, as metrics.jsonl has it, and the config are in wandb's record.
    for value in losses(run_dir).values():
        assert json.dumps(value).encode() in history, value
    assert b"hidden_size" in history and b"offline-test" in history


def test_peak_for_mfu_is_the_configured_one_or_the_gpus(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert device_peak_tflops(312.0, cuda) == 312.0 and device_peak_tflops(0.0, cpu) == 0.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 PCIe")
    assert device_peak_tflops(0.0, cuda) == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Some Future GPU")
    assert device_peak_tflops(0.0, cuda) == 0.0  # unknown: no MFU rather than a wrong one
