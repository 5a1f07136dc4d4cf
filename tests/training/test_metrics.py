"""What the trainer logs: strict JSON lines (nested records too: the downstream scores), wandb
and the console get them as flat "downstream/TASK/METRIC" keys, and a Weights & Biases run written
offline."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from megatron_ngpt.config import Config
from megatron_ngpt.training.metrics import MetricsLogger, device_peak_tflops, flatten, json_safe
from tests.training.trainer_runs import losses, records, train_one_process

RECORD = {"step": 3, "tokens": 96, "downstream": {
    "tiny_choice": {"acc": 0.5, "acc_norm": 0.25},
    "tiny_cloze": {"perplexity": math.inf, "acc": 0.0}}}


def test_nested_non_finite_scores_become_null_and_are_named():
    assert json_safe(RECORD) == {
        "step": 3, "tokens": 96, "downstream": {
            "tiny_choice": {"acc": 0.5, "acc_norm": 0.25},
            "tiny_cloze": {"perplexity": None, "acc": 0.0}},
        "nonfinite": ["downstream/tiny_cloze/perplexity"]}
    assert json_safe({"step": 1, "loss": math.nan}) == {"step": 1, "loss": None,
                                                         "nonfinite": ["loss"]}
    assert flatten(RECORD)["downstream/tiny_choice/acc_norm"] == 0.25


def test_logger_writes_nested_records(tmp_path, caplog):
    cfg = Config()
    cfg.logging.progress_bar = False
    logger = MetricsLogger(cfg, tmp_path, 10, 0, True)
    with caplog.at_level(logging.INFO):
        logger.write(RECORD)
    logger.close()
    (written,) = records(tmp_path)
    assert written["downstream"]["tiny_cloze"] == {"perplexity": None, "acc": 0.0}
    assert "downstream/tiny_choice/acc=0.5" in caplog.text


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
