"""Run the real trainer (`python -m megatron_ngpt.train`) on gloo ranks and read its metrics."""

from __future__ import annotations

import json
from pathlib import Path

from tests.launch import torchrun

# A model small enough for many CPU runs; 2 layers so that PP=2 splits it.
SMALL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
         "model.ffn_hidden_size=128", "data.seq_length=32", "training.micro_batch_size=2",
         "training.global_batch_size=8", "training.eval_interval=0",
         "logging.progress_bar=false"]


def train(nproc: int, run_dir: Path, arch: str, data_prefix: str, tokenizer: Path, *flags: str,
          check: bool = True):
    """Train `arch` (tiny config, SMALL overrides) into `run_dir`; extra flags win."""
    return torchrun(nproc, "-m", "megatron_ngpt.train", "--config", f"configs/tiny/{arch}.yaml",
                    *SMALL, "--data-path", data_prefix, "--tokenizer-model", str(tokenizer),
                    "--save", str(run_dir), "--log-interval", "1", "--device", "cpu", *flags,
                    check=check)


def losses(run_dir: Path) -> dict[int, float]:
    """Training loss by step; a step logged twice (a run that resumed) keeps its last value."""
    result = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            result[record["step"]] = record["loss"]
    return result


def assert_close(a: dict[int, float], b: dict[int, float], rel: float) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for step in a:
        assert abs(a[step] - b[step]) <= rel * abs(b[step]), (step, a[step], b[step])
