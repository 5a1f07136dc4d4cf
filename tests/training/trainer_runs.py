"""Run the real trainer (`python -m megatron_ngpt.train`) on gloo ranks and read its metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from megatron_ngpt.config import config_from_dict
from megatron_ngpt.data.datasets import build_datasets
from megatron_ngpt.data.tokenizer import load_tokenizer
from megatron_ngpt.training.schedule import RunPlan
from megatron_ngpt.training.trainer import TrainState, sample_counts
from tests.distributed import REPO, clean_env, torchrun
from tests.tiny import TINY_RUN


def trainer_args(run_dir: Path, arch: str, data_prefix: str, tokenizer: Path, *flags: str
                 ) -> list[str]:
    """The trainer's arguments for `arch` (tiny config, TINY_RUN) into `run_dir`; flags win."""
    return ["--config", f"configs/tiny/{arch}.yaml", *TINY_RUN, "--data-path", data_prefix,
            "--tokenizer-model", str(tokenizer), "--save", str(run_dir), "--log-interval", "1",
            "--device", "cpu", *flags]


def train(nproc: int, run_dir: Path, arch: str, data_prefix: str, tokenizer: Path, *flags: str,
          check: bool = True) -> subprocess.CompletedProcess:
    """Train under torchrun (which reports any failure as exit status 1)."""
    return torchrun(nproc, "-m", "megatron_ngpt.train",
                    *trainer_args(run_dir, arch, data_prefix, tokenizer, *flags), check=check)


def train_one_process(run_dir: Path, arch: str, data_prefix: str, tokenizer: Path, *flags: str,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """One process without torchrun, so that the trainer's own exit status comes back."""
    return subprocess.run(
        [sys.executable, "-m", "megatron_ngpt.train",
         *trainer_args(run_dir, arch, data_prefix, tokenizer, *flags)],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def records(run_dir: Path) -> list[dict]:
    """Every line of metrics.jsonl, parsed as strict JSON (no bare NaN)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line, parse_constant=_no_constants) for line in lines]


def _no_constants(name: str):
    raise ValueError(f"metrics.jsonl holds {name}, which is not JSON")


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """`key` (training loss by default) by step; a step logged twice keeps its last value."""
    return {r["step"]: r[key] for r in records(run_dir) if key in r}


def after_resume(run_dir: Path, key: str = "loss") -> tuple[int | None, dict[int, float]]:
    """(step the run last resumed from, `key` by step logged after that resume): only what the
    resumed run itself wrote counts."""
    lines = records(run_dir)
    starts = [i for i, r in enumerate(lines) if r.get("event") == "resumed"]
    if not starts:
        return None, {}
    return lines[starts[-1]]["step"], {r["step"]: r[key] for r in lines[starts[-1] + 1:]
                                       if key in r}


def assert_close(a: dict[int, float], b: dict[int, float], rel: float) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for step in a:
        assert abs(a[step] - b[step]) <= rel * abs(b[step]), (step, a[step], b[step])


def subset(values: dict[int, float], steps) -> dict[int, float]:
    return {step: values[step] for step in steps}


def validation_samples(run_dir: Path) -> dict[str, torch.Tensor]:
    """The samples a run's validation loss is computed on (the first `eval_iters` global batches
    of its validation split), built from its saved config exactly as the trainer built them."""
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    counts = sample_counts(cfg, TrainState(), RunPlan.for_run(cfg))
    _, valid, _ = build_datasets(cfg.data, load_tokenizer(cfg.data.tokenizer_model),
                                 cfg.data.seq_length, counts, cfg.training.seed,
                                 str(run_dir / "data_cache"))
    items = [valid[i] for i in range(cfg.training.eval_iters * cfg.training.global_batch_size)]
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items])
            for key in ("tokens", "labels", "loss_mask")}


def hf_validation_loss(model, samples: dict[str, torch.Tensor]) -> float:
    """Mean token cross entropy of a Hugging Face causal LM on `validation_samples`."""
    with torch.no_grad():
        logits = model(samples["tokens"]).logits.float()
    losses = F.cross_entropy(logits.flatten(0, 1), samples["labels"].flatten(), reduction="none")
    mask = samples["loss_mask"].flatten().float()
    return float((losses * mask).sum() / mask.sum())
