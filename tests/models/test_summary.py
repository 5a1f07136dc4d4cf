"""`python -m megatron_ngpt.summary`: the paper's parameter counts; a start without DeepSpeed."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from megatron_ngpt import summary
from megatron_ngpt.summary import format_table, parameter_rows
from tests.distributed import REPO

# The paper's Table 2: layers, d_model, d_MLP, and its parameter counts in millions.
SHAPES = {"0.5b": (24, 1024, 4096), "1b": (36, 1280, 5120)}
PAPER_MILLIONS = {("gpt2", "0.5b"): 468.2, ("ngpt", "0.5b"): 468.4,
                  ("gpt2", "1b"): 1025.7, ("ngpt", "1b"): 1026.1}
V = 32000


def count_from_shape(arch: str, size: str) -> int:
    """Embedding and LM head, QKV + W_o and the SwiGLU matrices per layer; GPT-2: two RMSNorm
    weights per layer and the final norm; nGPT: s_qk, alpha_A, alpha_M [d] and s_u, s_v [d_ff]
    per layer, s_z [V], no norms."""
    layers, d, ff = SHAPES[size]
    matrices = 2 * V * d + layers * (4 * d * d + 3 * ff * d)
    if arch == "gpt2":
        return matrices + layers * 2 * d + d
    return matrices + layers * (3 * d + 2 * ff) + V


def run_summary(*args: str) -> subprocess.CompletedProcess:
    """The CLI, from a shell that carries a multi-rank job's variables (it must ignore them)."""
    job = {"WORLD_SIZE": "4", "RANK": "1", "SLURM_NTASKS": "8", "MASTER_PORT": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **job})


def total_parameters(stdout: str) -> int:
    return int(re.search(r"^Total parameters: (\d+)$", stdout, re.MULTILINE).group(1))


@pytest.mark.parametrize("size", ["0.5b", "1b"])
@pytest.mark.parametrize("arch", ["gpt2", "ngpt"])
def test_models_have_the_paper_sizes(arch: str, size: str) -> None:
    # -X importtime lists every module the command imports (on stderr).
    proc = run_summary("-X", "importtime", "-m", "megatron_ngpt.summary",
                       f"configs/{arch}_{size}_1k.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = total_parameters(proc.stdout)
    assert total == count_from_shape(arch, size)
    # The paper's figures are these counts cut (not rounded) to 0.1M.
    assert math.floor(total / 1e5) == round(PAPER_MILLIONS[arch, size] * 10)
    d = SHAPES[size][1]
    row = rf"^embedding\.word_embeddings\.weight +{V} x {d} +1 +{V * d:,}$"
    assert re.search(row, proc.stdout, re.MULTILINE), proc.stdout
    # A summary needs no data-parallel engine and compiles nothing (issue 17: DeepSpeed's
    # shared-memory op build, then megatron's torch.compile'd kernels were most of its start).
    imported = re.findall(r"\| +([\w.]+)$", proc.stderr, re.MULTILINE)
    assert imported and not [m for m in imported if m.split(".")[0] == "deepspeed"]
    assert "torch._inductor.compile_fx" not in imported and "wandb.sdk" not in imported


def test_memory_plan_follows_the_parameter_table() -> None:
    proc = run_summary("-m", "megatron_ngpt.summary", "configs/ngpt_0.5b_8k.yaml", "--gpus", "16",
                       "--gpu-memory", "40")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = proc.stdout.split("Total parameters:")[1]
    assert "TP 1 x PP 1 x DP 16 = 16 GPUs, ZeRO-1, micro-batch 2 x 8192 tokens, 40 GiB" in plan
    header = next(line for line in plan.splitlines() if "bf16-params" in line)
    assert header.split() == ["fp32", "bf16*", "bf16-params"]
    assert re.search(r"^  fits 40 GiB +(yes|no) +(yes|no) +(yes|no)$", plan, re.MULTILINE)


def test_missing_vocab_is_a_clear_error() -> None:
    proc = run_summary("-m", "megatron_ngpt.summary", "configs/tiny/ngpt.yaml")
    assert proc.returncode == 2
    assert "model.vocab_size" in proc.stderr and "Traceback" not in proc.stderr


def test_gpus_that_do_not_split_the_batch_are_a_clear_error(capsys) -> None:
    # 512 sequences are not a multiple of micro-batch 16 x 3 data-parallel ranks.
    assert summary.main([str(REPO / "configs/ngpt_0.5b_1k.yaml"), "--gpus", "3"]) == 2
    err = capsys.readouterr().err
    assert "training.global_batch_size" in err and "16 x 3" in err


def test_layers_fold_into_one_row_with_their_multiplicity() -> None:
    params = [("embedding.word_embeddings.weight", torch.empty(10, 4))]
    params += [(f"layers.{i}.layer.mlp.linear_fc1.weight", torch.empty(8, 4)) for i in range(3)]
    params += [("head.s_z.weight", torch.empty(10))]
    rows = parameter_rows(params)
    assert [(r.name, r.copies, r.numel) for r in rows] == [
        ("embedding.word_embeddings.weight", 1, 40),
        ("layers.*.mlp.linear_fc1.weight", 3, 96),
        ("head.s_z.weight", 1, 10),
    ]
    table = format_table(rows).splitlines()
    assert table[-1] == "Total parameters: 146"
    assert table[-2].startswith("embedding 0.00M, layers 0.00M, head 0.00M")
