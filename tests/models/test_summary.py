"""`python -m megatron_ngpt.summary`: the 0.5B models have the paper's parameter counts."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from megatron_ngpt.summary import format_table, parameter_rows
from tests.distributed import REPO

V, D, FF, L = 32000, 1024, 4096, 24
MATRICES = 2 * V * D + L * (4 * D * D + 3 * FF * D)  # embedding, head; QKV + W_o, SwiGLU
EXPECTED = {
    # GPT: two RMSNorm weights per layer and the final norm.
    "gpt2": (MATRICES + L * 2 * D + D, 468.2e6),
    # nGPT: s_qk, alpha_A, alpha_M per layer [d]; s_u, s_v [d_ff]; s_z [V]. No norms.
    "ngpt": (MATRICES + L * (3 * D + 2 * FF) + V, 468.4e6),
}


def run_summary(*args: str) -> subprocess.CompletedProcess:
    """The CLI, from a shell that carries a multi-rank job's variables (it must ignore them)."""
    job = {"WORLD_SIZE": "4", "RANK": "1", "SLURM_NTASKS": "8", "MASTER_PORT": "1"}
    return subprocess.run([sys.executable, "-m", "megatron_ngpt.summary", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **job})


@pytest.mark.parametrize("arch", ["gpt2", "ngpt"])
def test_half_billion_models_have_the_paper_sizes(arch: str) -> None:
    proc = run_summary(f"configs/{arch}_0.5b_1k.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    total = int(last.removeprefix("Total parameters: "))
    exact, paper = EXPECTED[arch]
    assert total == exact
    assert abs(total - paper) < 0.1e6
    row = rf"^embedding\.word_embeddings\.weight +{V} x {D} +1 +{V * D:,}$"
    assert re.search(row, proc.stdout, re.MULTILINE), proc.stdout


def test_missing_vocab_is_a_clear_error() -> None:
    proc = run_summary("configs/tiny/ngpt.yaml")
    assert proc.returncode == 2
    assert "model.vocab_size" in proc.stderr and "Traceback" not in proc.stderr


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
