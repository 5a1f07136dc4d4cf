"""Checks for a GPU machine. Installs nothing: install the GPU extras first.

1. Transformer Engine = local: the TE and local layer specs, given the same weights, give the same
   logits, loss and gradients (fp32 and bf16, TP=1, both models; the 0.5B width with 2 layers).
   Skipped with the reason when Transformer Engine cannot be imported.
2. nGPT's compiled normalizations (`fused.py`) = their eager definitions on GPU, with their times.
3. `bench_gpu.py` on the 0.5B configs at 1k and 4k: local backend with and without the compiled
   nGPT ops, local backend with compiled layers, and TE when it is importable.

    pip install .[gpu]                    # Transformer Engine (optional: the checks skip it)
    python bench/gpu_check.py --output gpu_check.md
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_gpu
import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel

from megatron_ngpt.config import load_config, padded_vocab_size
from megatron_ngpt.models.fused import normalize_qk, residual_update
from megatron_ngpt.models.language_model import (
    LanguageModel,
    build_transformer_config,
    language_model_loss,
)
from megatron_ngpt.models.te_specs import te_param_name, transformer_engine_problem
from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed

CHECK_LAYERS = 2
CHECK_SEQ, CHECK_BATCH = 1024, 2


@dataclass(frozen=True)
class Tolerance:
    logits: float  # max |difference| / max |local logits|
    loss: float  # |difference| / local loss
    grad_cosine: float  # smallest cosine similarity between matching gradients


TOLERANCES = {
    torch.float32: Tolerance(logits=5e-3, loss=1e-4, grad_cosine=0.999),  # TE may use TF32
    torch.bfloat16: Tolerance(logits=5e-2, loss=5e-3, grad_cosine=0.98),
}


def _rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def copy_local_to_te(local: LanguageModel, te: LanguageModel) -> None:
    """Give the TE model the local model's weights, mapping the fused norm weights' names."""
    te_params = {n: p for n, p in te.named_parameters() if p.numel()}  # TE may keep empty biases
    mapped = {te_param_name(name): p for name, p in local.named_parameters()}
    if set(mapped) != set(te_params):
        raise RuntimeError(
            f"parameter names do not map: local-only {sorted(set(mapped) - set(te_params))}, "
            f"TE-only {sorted(set(te_params) - set(mapped))}"
        )
    with torch.no_grad():
        for name, p in mapped.items():
            te_params[name].copy_(p)


def te_equivalence(arch: str, dtype: torch.dtype, device: torch.device) -> list[str]:
    """One markdown table row: how far the TE model is from the local one."""
    cfg = load_config(bench_gpu.CONFIGS / f"{arch}_0.5b_1k.yaml",
                      [f"model.num_layers={CHECK_LAYERS}", f"data.seq_length={CHECK_SEQ}"])
    vocab = padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, 1)
    config = build_transformer_config(cfg.model, vocab, params_dtype=dtype)
    torch.manual_seed(0)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    local = LanguageModel(config, "local").to(device)
    te = LanguageModel(config, "te").to(device)
    copy_local_to_te(local, te)
    tokens = torch.randint(0, cfg.model.vocab_size, (CHECK_BATCH, CHECK_SEQ), device=device)
    labels = torch.randint(0, cfg.model.vocab_size, (CHECK_BATCH, CHECK_SEQ), device=device)
    outputs = []
    for model in (local, te):
        logits = model(tokens)
        loss = language_model_loss(logits, labels)
        loss.backward()
        outputs.append((logits.detach(), loss.item()))
    (logits_local, loss_local), (logits_te, loss_te) = outputs
    te_params = dict(te.named_parameters())
    grad_cos = min(
        F.cosine_similarity(p.grad.float().flatten(),
                            te_params[te_param_name(name)].grad.float().flatten(), dim=0).item()
        for name, p in local.named_parameters()
    )
    logits_err = _rel_max(logits_te, logits_local)
    loss_err = abs(loss_te - loss_local) / abs(loss_local)
    tol = TOLERANCES[dtype]
    ok = logits_err <= tol.logits and loss_err <= tol.loss and grad_cos >= tol.grad_cosine
    del local, te
    torch.cuda.empty_cache()
    return [arch, str(dtype).removeprefix("torch."), f"{logits_err:.2e}", f"{loss_local:.5f}",
            f"{loss_te:.5f}", f"{loss_err:.2e}", f"{grad_cos:.6f}", "pass" if ok else "FAIL"]


def check_te(device: torch.device) -> tuple[str, bool]:
    problem = transformer_engine_problem()
    if problem is not None:
        return f"Skipped: {problem} (install it with `pip install .[gpu]`).", True
    rows = [te_equivalence(arch, dtype, device)
            for arch in ("ngpt", "gpt2") for dtype in (torch.float32, torch.bfloat16)]
    header = ["model", "dtype", "logits rel. err", "loss local", "loss TE", "loss rel. err",
              "min grad cosine", "result"]
    tol = ", ".join(f"{str(k).removeprefix('torch.')}: {v}" for k, v in TOLERANCES.items())
    table = _table(header, rows) + f"\n\nTolerances: {tol}"
    return table, all(r[-1] == "pass" for r in rows)


def _time_ms(fn: Callable[[], None], repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def _fused_case(op, inputs: list[torch.Tensor], dtype: torch.dtype) -> tuple[float, float, float]:
    """(worst relative error of outputs and input grads, eager ms, compiled ms), fwd + bwd."""

    def run(fn) -> list[torch.Tensor]:
        xs = [x.detach().requires_grad_() for x in inputs]
        out = fn(*xs)
        outs = list(out) if isinstance(out, tuple) else [out]
        # Fixed random cotangents: a norm-based loss would have zero gradient through norm().
        gen = torch.Generator(outs[0].device).manual_seed(0)
        torch.autograd.backward(outs, [torch.randn(o.shape, generator=gen, device=o.device,
                                                   dtype=o.dtype) for o in outs])
        return [o.detach() for o in outs] + [x.grad for x in xs]

    eager, compiled = run(op.eager), run(op.compiled)
    err = max(_rel_max(c, e) for c, e in zip(compiled, eager, strict=True))
    return err, _time_ms(lambda: run(op.eager)), _time_ms(lambda: run(op.compiled))


def check_fused(device: torch.device) -> tuple[str, bool]:
    """Compiled vs eager nGPT ops at the 0.5B shapes (16k tokens, d 1024, 16 heads of 64)."""
    rows, ok = [], True
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        s, b, d, heads = 1024, 16, 1024, 16
        h = F.normalize(torch.randn(s, b, d, device=device), dim=-1).to(dtype)
        x = torch.randn(s, b, d, device=device, dtype=dtype)
        alpha = torch.full((d,), 0.05, device=device)
        q, k = (torch.randn(s, b, heads, d // heads, device=device, dtype=dtype) for _ in "qk")
        s_qk = torch.ones(d, device=device)
        for name, op, inputs in (("residual_update", residual_update, [h, x, alpha]),
                                 ("normalize_qk", normalize_qk, [q, k, s_qk])):
            err, eager_ms, compiled_ms = _fused_case(op, inputs, dtype)
            ok &= err <= tol
            rows.append([name, str(dtype).removeprefix("torch."), f"{err:.2e}", f"{eager_ms:.3f}",
                         f"{compiled_ms:.3f}", f"{eager_ms / compiled_ms:.2f}x",
                         "pass" if err <= tol else "FAIL"])
    header = ["op", "dtype", "rel. err", "eager fwd+bwd (ms)", "compiled fwd+bwd (ms)", "speed-up",
              "result"]
    return _table(header, rows), ok


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def benchmarks(args: argparse.Namespace, device: torch.device) -> str:
    """bench_gpu runs: local with and without compiled nGPT ops, local with compiled layers,
    TE when importable."""
    common = ["--steps", str(args.steps), "--seq", args.seq]
    runs = [("Local backend (SDPA), compiled nGPT ops", ["--impl", "local"]),
            ("Local backend (SDPA), eager nGPT ops", ["--impl", "local", "--models", "ngpt",
                                                     "--no-compile-fused"]),
            ("Local backend (SDPA), compiled layers", ["--impl", "local", "--compile-layers"])]
    if transformer_engine_problem() is None:
        runs.append(("Transformer Engine, compiled nGPT ops", ["--impl", "te"]))
    sections, ngpt_step = [], {}
    for title, extra in runs:
        print(f"benchmark: {title}", file=sys.stderr, flush=True)
        bench_args = bench_gpu.parse_args(common + extra)
        results = bench_gpu.run_benchmarks(bench_args, device)
        sections += [f"### {title}", "", bench_gpu.format_report(bench_args, device, results), ""]
        for r in results:
            if (r.model == "ngpt" and r.status == "ok" and bench_args.impl == "local"
                    and not bench_args.compile_layers):
                ngpt_step[(bench_args.compile_fused, r.seq)] = r.step_s
    gains = [f"- seq {seq}: nGPT step {ngpt_step[(False, seq)] * 1e3:.1f} ms eager -> "
             f"{ngpt_step[(True, seq)] * 1e3:.1f} ms compiled "
             f"({ngpt_step[(False, seq)] / ngpt_step[(True, seq)]:.3f}x)"
             for seq in bench_gpu.int_list(args.seq)
             if (False, seq) in ngpt_step and (True, seq) in ngpt_step]
    if gains:
        sections += ["### Gain of the compiled nGPT ops (local backend)", "", *gains, ""]
    return "\n".join(sections)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("gpu_check.md"))
    parser.add_argument("--skip-te-check", action="store_true")
    parser.add_argument("--skip-fused-check", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="timed benchmark steps")
    parser.add_argument("--seq", default="1024,4096", help="benchmark contexts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run it on a GPU machine", file=sys.stderr)
        return 2
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    device = init_distributed(1, 1, "cuda").device
    sections, all_ok = [f"# GPU check: {torch.cuda.get_device_name(device)}, "
                        f"torch {torch.__version__}", ""], True
    steps = [("Transformer Engine = local", check_te, args.skip_te_check),
             ("Compiled nGPT ops = eager", check_fused, args.skip_fused_check)]
    try:
        for title, check, skip in steps:
            if skip:
                continue
            print(f"check: {title}", file=sys.stderr, flush=True)
            text, ok = check(device)
            all_ok &= ok
            sections += [f"## {title}", "", text, ""]
            print("\n".join(sections[-4:]), flush=True)
        if not args.skip_bench:
            text = benchmarks(args, device)
            sections += ["## Benchmarks (bench/bench_gpu.py)", "", text]
            print(text, flush=True)
    finally:
        args.output.write_text("\n".join(sections) + "\n")
        shutdown_distributed()
    print(f"written: {args.output}", file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
