"""bench/bench_gpu.py: the FLOPs formula and a CPU smoke run of the whole benchmark."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_ngpt.config import Config
from megatron_ngpt.models.normalize import mark_normalized

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_gpu.py"


@pytest.fixture
def bench_gpu(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_flops_per_token_is_6n_plus_attention(bench_gpu):
    # 0.5B: 24 layers of QKV + O + SwiGLU (3 x d x 4d) and the 32000-row LM head.
    d, layers, vocab = 1024, 24, 32000
    n = layers * (4 * d * d + 3 * d * 4 * d) + vocab * d
    assert bench_gpu.flops_per_token(n, layers, d, 1024) == 6 * n + 12 * layers * d * 1024
    assert bench_gpu.flops_per_token(n, layers, d, 4096) - bench_gpu.flops_per_token(
        n, layers, d, 1024) == 12 * layers * d * 3072


def test_cpu_tiny_run_prints_a_table(tmp_path):
    output = tmp_path / "bench.md"
    # A fresh one-rank world: no rendezvous settings inherited from this test process.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--seq", "32,64",
         "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ngpt")
            or line.startswith("| gpt2")]
    assert [(r.split("|")[1].strip(), r.split("|")[3].strip()) for r in rows] == [
        ("ngpt", "32"), ("ngpt", "64"), ("gpt2", "32"), ("gpt2", "64")]
    for row in rows:
        tokens_per_s = float(row.split("|")[6].replace(",", ""))
        assert tokens_per_s > 0
    assert "seq 64: nGPT / GPT-2 time per token" in proc.stdout
    assert output.read_text().strip() in proc.stdout


def test_master_weight_step_renormalizes_the_fp32_masters(bench_gpu):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False),
                                torch.nn.Linear(32, 16, bias=False)).to(torch.bfloat16)
    mark_normalized(model[0].weight, 1)  # rows, like QKV
    mark_normalized(model[1].weight, 0)  # columns, like W_o
    cfg = Config()
    cfg.optimizer.lr = 0.1
    optimizer = bench_gpu.MasterWeightAdamW(model, cfg, fused=False)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 16, dtype=torch.bfloat16)).square().sum().backward()
    optimizer.step()
    rows, cols = optimizer.master
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(cols.norm(dim=0), torch.ones(32))
    for param, master, old in zip(model.parameters(), optimizer.master, before, strict=True):
        assert param.dtype == torch.bfloat16 and master.dtype == torch.float32
        assert torch.equal(param, master.to(torch.bfloat16)) and not torch.equal(param, old)
        assert param.grad is None and master.grad is None
