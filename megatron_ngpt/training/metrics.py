"""Training metrics: metrics.jsonl, a console progress bar with ETA (on a terminal), and wandb
when enabled."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from megatron_ngpt.config import Config
from megatron_ngpt.hardware import peak_bf16_tflops
from megatron_ngpt.log import get_logger


def flops_per_token(cfg: Config, vocab_size: int) -> float:
    """Training FLOPs per token (forward + backward), Megatron-style.

    6 x (matmul parameters: layers and LM head) + 12 x layers x hidden x seq for attention scores
    and values (the causal half is not subtracted, as Megatron does).
    """
    m = cfg.model
    per_layer = (3 * m.hidden_size * m.hidden_size + m.hidden_size * m.hidden_size
                 + 3 * m.hidden_size * m.ffn_hidden_size)
    matmul_params = m.num_layers * per_layer + vocab_size * m.hidden_size
    return 6.0 * matmul_params + 12.0 * m.num_layers * m.hidden_size * cfg.data.seq_length


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:
        return 0.0


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as "a/b/c" keys (the downstream scores, for wandb and the console)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """The record with non-finite numbers as null, which JSON can hold (bare NaN is not JSON);
    the keys that were non-finite are listed under "nonfinite" ("a/b" inside nested dicts)."""
    bad = [k for k, v in flatten(record).items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return record

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return {**clean(record), "nonfinite": bad}


class MetricsLogger:
    """Rank 0 writes; other ranks hold an inert logger. Records with an "event" key (a resume)
    go to the file and the console only."""

    def __init__(self, cfg: Config, run_dir: Path, total_steps: int, start_step: int,
                 enabled: bool) -> None:
        self.enabled = enabled
        self.log = get_logger()
        self.file = None
        self.bar = None
        self.wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        # A bar redraws itself with carriage returns: only for a terminal, never into a log file.
        if cfg.logging.progress_bar and sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True, mininterval=1.0)
        if cfg.logging.wandb:
            import wandb

            if not os.environ.get("WANDB_API_KEY"):
                os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb.init(project=cfg.logging.wandb_project,
                                    name=cfg.logging.wandb_run_name or run_dir.name,
                                    dir=str(run_dir), config=cfg.to_dict(), resume="allow")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        if "event" in record:
            text = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("event", "step"))
            self.log.info("step %d: %s (%s)", record["step"], record["event"], text)
            return
        flat = flatten(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in flat.items() if v is not None}, step=record["step"])
        shown = {k: v for k, v in flat.items() if v is not None and (
            k in ("loss", "val_loss", "lr", "grad_norm", "tokens_per_sec", "mfu")
            or k.startswith("downstream/"))}
        text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.write(f"step {record['step']}: {text}")
        else:
            self.log.info("step %d: %s", record["step"], text)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def device_peak_tflops(configured: float, device: torch.device) -> float:
    """`logging.peak_tflops`, or for 0 the dense bf16 peak of this GPU (0 where unknown: no MFU)."""
    if configured or device.type != "cuda":
        return configured
    name = torch.cuda.get_device_name(device)
    peak = peak_bf16_tflops(name)
    if peak is None:
        get_logger().warning("logging.peak_tflops=0 but %s is not in megatron_ngpt/hardware.py: "
                             "no MFU (set logging.peak_tflops)", name)
    return peak or 0.0


class Throughput:
    """Tokens/s, TFLOP/s and MFU over the steps since the last report."""

    def __init__(self, flops_per_token: float, peak_tflops: float, world_size: int) -> None:
        self.flops_per_token = flops_per_token
        self.peak = peak_tflops * world_size
        self.start = time.perf_counter()
        self.tokens = 0
        self.steps = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens
        self.steps += 1

    def report(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tokens_per_sec = self.tokens / elapsed
        tflops = tokens_per_sec * self.flops_per_token / 1e12
        step_time = elapsed / max(self.steps, 1)
        self.start, self.tokens, self.steps = time.perf_counter(), 0, 0
        return {"tokens_per_sec": tokens_per_sec, "tflops": tflops,
                "mfu": tflops / self.peak if self.peak else None, "step_time": step_time}
