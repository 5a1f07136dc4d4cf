"""Run the real trainer (`python -m megatron_ngpt.train`) on gloo ranks and read its metrics."""

from __future__ import annotations

import json
from pathlib import Path

from tests.distributed import torchrun
from tests.tiny import TINY_RUN


def train(nproc: int, run_dir: Path, arch: str, data_prefix: str, tokenizer: Path, *flags: str,
          check: bool = True):
    """Train `arch` (tiny config, TINY_RUN overrides) into `run_dir`; extra flags win."""
    return torchrun(nproc, "-m", "megatron_ngpt.train", "--config", f"configs/tiny/{arch}.yaml",
                    *TINY_RUN, "--data-path", data_prefix, "--tokenizer-model", str(tokenizer),
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
