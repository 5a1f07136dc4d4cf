"""Correctness on a CUDA device (marker `gpu`; skipped without one). `bench/device/run.sh` runs
them with `pytest -m gpu` before the benchmarks.

- compiled layers give the eager numbers on CUDA (inductor's GPU code, not the CPU code that the
  CPU suite checks);
- inside a model on CUDA, nGPT's normalizations run the Triton kernels, with the eager numbers;
- Transformer Engine layers give the local layers' numbers (only where TE imports);
- the real trainer trains nGPT on CUDA under ZeRO-1 in bf16, and its fp32 master matrices are
  unit-norm afterwards, the bf16 model weights their rounding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from megatron_ngpt.config import load_config
from megatron_ngpt.models import fused
from megatron_ngpt.models.language_model import LanguageModel, language_model_loss
from megatron_ngpt.models.normalize import normalized_dim
from megatron_ngpt.models.specs import te_param_name
from megatron_ngpt.models.te_support import transformer_engine_problem
from megatron_ngpt.models.transformer_config import build_transformer_config
from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed
from tests.distributed import torchrun

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
VOCAB, SEQ, BATCH = 1024, 256, 2
# 0.5B-style heads of 64 at a small width, two layers.
SMALL = ["model.num_layers=2", "model.hidden_size=256", "model.num_attention_heads=4",
         "model.ffn_hidden_size=1024", f"model.vocab_size={VOCAB}"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    logits: float  # max |difference| / max |reference logits|
    loss: float  # |difference| / reference loss
    grad_cosine: float  # smallest cosine similarity between matching gradients


TOLERANCES = {
    torch.float32: Tolerance(logits=5e-3, loss=1e-4, grad_cosine=0.999),  # TE may use TF32
    torch.bfloat16: Tolerance(logits=5e-2, loss=5e-3, grad_cosine=0.98),
}
EXACT_FP32 = Tolerance(logits=1e-5, loss=1e-6, grad_cosine=0.99999)  # same math, other kernels


@pytest.fixture(scope="module")
def cuda_rank():
    dims = init_distributed(1, 1, "cuda")
    yield dims.device
    shutdown_distributed()


def _model(arch: str, dtype: torch.dtype, device, *overrides: str) -> LanguageModel:
    cfg = load_config(CONFIGS / "tiny" / f"{arch}.yaml", [*SMALL, *overrides])
    config = build_transformer_config(cfg.model, VOCAB, params_dtype=dtype)
    return LanguageModel(config).to(device)


def _batch(device):
    gen = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, VOCAB, (2, BATCH, SEQ), generator=gen)
    return tokens.to(device), labels.to(device)


def _logits_loss_grads(model: LanguageModel, tokens, labels):
    logits = model(tokens)
    loss = language_model_loss(logits, labels)
    loss.backward()
    return logits.detach(), loss.item(), {n: p.grad for n, p in model.named_parameters()}


def _assert_same_numbers(reference, other, tol: Tolerance, rename=lambda name: name) -> None:
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = reference, other
    logits_err = ((logits_b.float() - logits_a.float()).abs().max()
                  / logits_a.float().abs().max()).item()
    assert logits_err <= tol.logits, f"logits differ by {logits_err:.3g}"
    assert abs(loss_b - loss_a) <= tol.loss * abs(loss_a), (loss_a, loss_b)
    for name, grad in grads_a.items():
        other = grads_b[rename(name)]
        cosine = F.cosine_similarity(grad.float().flatten(), other.float().flatten(), dim=0).item()
        assert cosine >= tol.grad_cosine, f"{name}: gradient cosine {cosine:.6f}"


@pytest.mark.parametrize("arch, dtype", [("ngpt", torch.float32), ("gpt2", torch.float32),
                                         ("ngpt", torch.bfloat16)])
def test_compiled_layers_match_eager(cuda_rank, arch, dtype):
    tokens, labels = _batch(cuda_rank)
    eager = _logits_loss_grads(_model(arch, dtype, cuda_rank), tokens, labels)
    compiled = _logits_loss_grads(_model(arch, dtype, cuda_rank, "model.compile_layers=true"),
                                  tokens, labels)
    _assert_same_numbers(eager, compiled, EXACT_FP32 if dtype == torch.float32
                         else TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ngpt_model_runs_the_triton_kernels(cuda_rank, monkeypatch, dtype):
    if not fused.triton_ops.HAS_TRITON:
        pytest.skip("Triton is not installed")
    tokens, labels = _batch(cuda_rank)
    reference = _logits_loss_grads(_model("ngpt", dtype, cuda_rank, "model.compile_ngpt_ops=false"),
                                   tokens, labels)
    calls = []
    for op in (fused.residual_update, fused.normalize_qk):
        kernel = op.triton
        monkeypatch.setattr(op, "triton", lambda *a, kernel=kernel: calls.append(1) or kernel(*a))
    got = _logits_loss_grads(_model("ngpt", dtype, cuda_rank, "model.compile_ngpt_ops=true"),
                             tokens, labels)
    assert len(calls) == 2 * 3  # per layer: q/k, the attention and the MLP residual updates
    _assert_same_numbers(reference, got, EXACT_FP32 if dtype == torch.float32
                         else TOLERANCES[dtype])


@pytest.mark.parametrize("arch", ["ngpt", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transformer_engine_matches_local(cuda_rank, arch, dtype):
    problem = transformer_engine_problem()
    if problem is not None:
        pytest.skip(f"Transformer Engine: {problem}")
    tokens, labels = _batch(cuda_rank)
    local = _model(arch, dtype, cuda_rank)
    te = _model(arch, dtype, cuda_rank, "model.transformer_impl=transformer_engine")
    te_params = {n: p for n, p in te.named_parameters() if p.numel()}  # TE may keep empty biases
    assert {te_param_name(n) for n, _ in local.named_parameters()} == set(te_params)
    with torch.no_grad():
        for name, p in local.named_parameters():
            te_params[te_param_name(name)].copy_(p)
    _assert_same_numbers(_logits_loss_grads(local, tokens, labels),
                         _logits_loss_grads(te, tokens, labels), TOLERANCES[dtype],
                         rename=te_param_name)


def test_trainer_keeps_ngpt_masters_unit_norm_under_zero1_bf16(cuda_rank, tmp_path,
                                                               tiny_dataset_prefix,
                                                               sp_tokenizer_path):
    """`python -m megatron_ngpt.train` on CUDA; the checkpoint's fp32 weights are gathered from
    DeepSpeed's master partitions, its module weights are the bf16 model's."""
    run = tmp_path / "run"
    torchrun(1, "-m", "megatron_ngpt.train", "--config", "configs/tiny/ngpt.yaml", *SMALL,
             "data.seq_length=64", "training.micro_batch_size=4", "training.global_batch_size=8",
             "training.train_iters=4", "training.eval_interval=0", "training.precision=bf16",
             "parallel.zero_stage=1", "optimizer.lr=0.02", "logging.progress_bar=false",
             "--data-path", tiny_dataset_prefix, "--tokenizer-model", str(sp_tokenizer_path),
             "--save", str(run), "--device", "cuda", timeout=600)
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    masters = torch.load(checkpoint / "model_fp32_pp0.pt")
    (module_file,) = checkpoint.rglob("mp_rank_00_model_states.pt")
    module = torch.load(module_file, weights_only=False)["module"]
    initial = _model("ngpt", torch.float32, "cpu")  # the trainer's seed: its starting weights
    normalized = {n: normalized_dim(p) for n, p in initial.named_parameters()
                  if normalized_dim(p) is not None}
    assert len(normalized) == 2 + 4 * 2  # embedding, head, 4 matrices per layer
    start = dict(initial.named_parameters())
    for name, dim in normalized.items():
        master = masters[name]
        assert master.dtype == torch.float32
        assert not torch.equal(master, start[name].detach()), f"{name} did not train"
        err = (master.double().norm(dim=dim) - 1).abs().max().item()
        assert err < 1e-6, f"{name}: master norms off by {err:.2e}"
        assert torch.equal(module[name].cpu(), master.to(torch.bfloat16)), name
