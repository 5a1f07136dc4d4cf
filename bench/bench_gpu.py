"""Single-GPU training throughput of the 0.5B nGPT and GPT-2 configs: tokens/s, TFLOP/s, MFU.

One timed step is what training does per micro-batch: forward, backward, gradient clipping,
AdamW on fp32 master weights, nGPT's renormalization of the masters, and the copy back to the
model's bf16 parameters (DeepSpeed's bf16 mode in miniature; scaling vectors stay fp32). Inputs
are random tokens: throughput does not depend on the data.

FLOPs per token, the standard estimate (PaLM, appendix B; nanoGPT's `estimate_mfu`):
``6 N + 12 L d s`` with N the parameters of the matrices that multiply activations (every weight
matrix but the input embedding table, LM head included), L layers, d = heads x head dim and s the
context. The attention term counts the full s x s score matrix (no causal discount), forward and
backward. nGPT's extra normalizations are not counted: MFU measures useful work.

    python bench/bench_gpu.py                                 # both models at 1k and 4k
    python bench/bench_gpu.py --impl te --models ngpt --seq 4096
    python bench/bench_gpu.py --device cpu --tiny             # smoke test (tiny configs, 2 steps)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core import tensor_parallel

from megatron_ngpt.config import Config, load_config, padded_vocab_size
from megatron_ngpt.models.language_model import (
    LanguageModel,
    backend_for,
    build_transformer_config,
)
from megatron_ngpt.models.normalize import (
    matrix_fragment,
    normalize_fragments_,
    normalized_dim,
)
from megatron_ngpt.models.te_specs import transformer_engine_problem
from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOKENS_PER_MICRO_BATCH = 16384  # the 0.5B configs: micro-batch 16 at 1k, 4 at 4k
TINY_VOCAB = 512


@dataclass
class Result:
    model: str
    impl: str
    seq: int
    micro_batch: int
    step_s: float = float("nan")
    tokens_per_s: float = float("nan")
    tflops: float = float("nan")
    mfu: float = float("nan")
    peak_mem_gib: float = float("nan")
    status: str = "ok"


def flops_per_token(matmul_params: int, num_layers: int, attn_width: int, seq: int) -> float:
    """Training FLOPs per token: ``6 N + 12 L d s`` (see the module docstring)."""
    return 6.0 * matmul_params + 12.0 * num_layers * attn_width * seq


def matmul_param_count(model: LanguageModel) -> int:
    """Parameters of every weight matrix except the input embedding table (a lookup)."""
    embedding = model.embedding.word_embeddings.weight
    return sum(p.numel() for p in model.parameters() if p.dim() == 2 and p is not embedding)


class MasterWeightAdamW:
    """AdamW on fp32 copies of the model's parameters, renormalizing nGPT's matrices after it.

    The renormalization acts on the fp32 masters: normalizing only the bf16 copy would be undone
    by the next step's copy back.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config, fused: bool) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [torch.nn.Parameter(p.detach().float().clone()) for p in self.params]
        self.normalized = [
            matrix_fragment(m, normalized_dim(p))
            for p, m in zip(self.params, self.master, strict=True)
            if normalized_dim(p) is not None
        ]
        o = cfg.optimizer
        self.clip = o.clip_grad
        self.optimizer = torch.optim.AdamW(
            self.master, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
            weight_decay=o.weight_decay, fused=fused,
        )

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.master, strict=True):
            m.grad = p.grad.float()
            p.grad = None
        torch.nn.utils.clip_grad_norm_(self.master, self.clip, foreach=True)
        self.optimizer.step()
        normalize_fragments_(self.normalized)
        torch._foreach_copy_(self.params, self.master)
        for m in self.master:
            m.grad = None


def load_model_config(arch: str, seq: int, args: argparse.Namespace) -> Config:
    """The 0.5B config of `arch` (the tiny one with --tiny) at context `seq`."""
    path = CONFIGS / "tiny" / f"{arch}.yaml" if args.tiny else CONFIGS / f"{arch}_0.5b_1k.yaml"
    overrides = [
        f"data.seq_length={seq}",
        f"model.transformer_impl={'transformer_engine' if args.impl == 'te' else 'local'}",
        f"model.compile_ngpt_ops={str(args.compile_fused).lower()}",
        f"model.compile_layers={str(args.compile_layers).lower()}",
    ]
    if args.tiny:
        overrides.append(f"model.vocab_size={TINY_VOCAB}")
    return load_config(path, overrides)


def micro_batch_for(seq: int, args: argparse.Namespace) -> int:
    if args.micro_batch:
        return args.micro_batch
    return 2 if args.tiny else max(1, TOKENS_PER_MICRO_BATCH // seq)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: LanguageModel, optimizer: MasterWeightAdamW, vocab: int, seq: int,
               micro_batch: int, args: argparse.Namespace, device: torch.device) -> float:
    """Seconds per training step, averaged over `args.steps` after `args.warmup` steps."""
    tokens = torch.randint(0, vocab, (micro_batch, seq), device=device)
    labels = torch.randint(0, vocab, (micro_batch, seq), device=device)

    def step() -> None:
        model(tokens, labels).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / args.steps


def bench_model(arch: str, impl: str, args: argparse.Namespace,
                device: torch.device) -> list[Result]:
    """Build `arch` once, then time it at every context in `args.seq`."""
    cfg = load_model_config(arch, args.seq[0], args)
    vocab = padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, 1)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    config = build_transformer_config(cfg.model, vocab, params_dtype=dtype,
                                      activation_checkpointing=args.activation_checkpointing)
    torch.manual_seed(cfg.training.seed)
    if device.type == "cuda":
        tensor_parallel.model_parallel_cuda_manual_seed(cfg.training.seed)
    model = LanguageModel(config, backend_for(cfg.model)).to(device).train()
    optimizer = MasterWeightAdamW(model, cfg, fused=device.type == "cuda")
    n_matmul = matmul_param_count(model)
    results = []
    for seq in args.seq:
        mb = micro_batch_for(seq, args)
        result = Result(arch, impl, seq, mb)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            result.step_s = time_steps(model, optimizer, cfg.model.vocab_size, seq, mb, args,
                                       device)
        except torch.OutOfMemoryError:
            result.status = "OOM"
            model.zero_grad(set_to_none=True)
        else:
            result.tokens_per_s = mb * seq / result.step_s
            flops = flops_per_token(n_matmul, config.num_layers,
                                    config.num_attention_heads * config.kv_channels, seq)
            result.tflops = result.tokens_per_s * flops / 1e12
            result.mfu = result.tflops / args.peak_tflops
            if device.type == "cuda":
                result.peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
        results.append(result)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| model | impl | seq | micro-batch | step (ms) | tokens/s | TFLOP/s | MFU "
        "| peak mem (GiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(f"| {r.model} | {r.impl} | {r.seq} | {r.micro_batch} | {r.status} "
                         "| | | | |")
            continue
        memory = "-" if math.isnan(r.peak_mem_gib) else f"{r.peak_mem_gib:.1f}"
        lines.append(
            f"| {r.model} | {r.impl} | {r.seq} | {r.micro_batch} | {r.step_s * 1e3:.1f} "
            f"| {r.tokens_per_s:,.0f} | {r.tflops:.4g} | {r.mfu:.2%} | {memory} |"
        )
    return "\n".join(lines)


def step_time_ratios(results: list[Result]) -> str:
    """nGPT / GPT-2 time per token at each context where both ran."""
    ok = {(r.model, r.seq): r for r in results if r.status == "ok"}
    lines = []
    for seq in sorted({r.seq for r in results}):
        if ("ngpt", seq) in ok and ("gpt2", seq) in ok:
            ratio = ok[("gpt2", seq)].tokens_per_s / ok[("ngpt", seq)].tokens_per_s
            lines.append(f"- seq {seq}: nGPT / GPT-2 time per token = {ratio:.3f}")
    return "\n".join(lines)


def describe_run(args: argparse.Namespace, device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = ("bf16 parameters, fp32 master weights + AdamW" if args.dtype == "bf16"
                 else "fp32 parameters")
    return (
        f"{name}, torch {torch.__version__}; {precision}; "
        f"compiled nGPT ops: {'on' if args.compile_fused else 'off'}; "
        f"activation checkpointing: {'on' if args.activation_checkpointing else 'off'}; "
        f"compiled layers: {'on' if args.compile_layers else 'off'}; "
        f"{args.warmup} warmup + {args.steps} timed steps; MFU vs {args.peak_tflops:g} TFLOP/s"
    )


def resolve_impl(requested: str) -> str:
    """TE when asked for and usable, else the local backend (SDPA flash / efficient kernels)."""
    if requested == "te":
        problem = transformer_engine_problem()
        if problem is None:
            return "te"
        print(f"--impl te: {problem}; benchmarking --impl local (SDPA) instead", file=sys.stderr)
    return "local"


def run_benchmarks(args: argparse.Namespace, device: torch.device) -> list[Result]:
    """Time every requested model at every context (`args.impl` becomes the one used)."""
    args.impl = resolve_impl(args.impl)
    return [r for arch in args.models for r in bench_model(arch, args.impl, args, device)]


def format_report(args: argparse.Namespace, device: torch.device, results: list[Result]) -> str:
    report = [describe_run(args, device), "", markdown_table(results)]
    ratios = step_time_ratios(results)
    if ratios:
        report += ["", ratios]
    return "\n".join(report)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _model_list(text: str) -> list[str]:
    models = [v for v in text.split(",") if v]
    unknown = set(models) - {"ngpt", "gpt2"}
    if unknown or not models:
        raise argparse.ArgumentTypeError(f"models are ngpt and/or gpt2, got {text!r}")
    return models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=_model_list, default=["ngpt", "gpt2"])
    parser.add_argument("--seq", type=int_list, default=None,
                        help="contexts, comma-separated (default 1024,4096; --tiny: 64,128)")
    parser.add_argument("--micro-batch", type=int, default=0,
                        help=f"default: {TOKENS_PER_MICRO_BATCH} tokens per micro-batch")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (10; --tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (3; --tiny: 1)")
    parser.add_argument("--impl", choices=("local", "te"), default="local")
    parser.add_argument("--compile-fused", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile nGPT's normalizations (CUDA only)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--compile-layers", action="store_true",
                        help="torch.compile every transformer layer (CUDA)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                        help="parameter dtype (default bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of one device (989: H100 SXM)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configs, 2 steps (smoke test)")
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.seq is None:
        args.seq = [64, 128] if args.tiny else [1024, 4096]
    if args.steps is None:
        args.steps = 2 if args.tiny else 10
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 3
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # megatron-core wants one hardware queue so communication kernels start in issue order; it
    # must be set before CUDA starts (see docs/gpu.md).
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    dims = init_distributed(1, 1, args.device)
    try:
        report = format_report(args, dims.device, run_benchmarks(args, dims.device))
    finally:
        shutdown_distributed()
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
