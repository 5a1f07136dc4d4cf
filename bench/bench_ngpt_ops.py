"""nGPT's per-token ops alone on one GPU: which implementation to use where (`models/fused.py`).

Forward + backward of each op at the 0.5B shapes (16k tokens, d 1024, 16 heads of 64, bf16):

- standalone, as an eager layer calls it: the eager definition, `torch.compile` of it, the
  Triton kernel;
- inside a compiled region, as a compiled layer calls it: with its neighbours (RoPE before the q/k
  normalization, the output projection's matmul before the residual update), once with the eager
  definition traced and fused by inductor, once with the Triton kernel as an opaque custom op.

Times are medians (`triton.testing.do_bench` on GPU); GB/s counts the fewest bytes the op must
move (each input read once, each output written once, forward and backward), to compare with the
device's copy bandwidth. The error is against the eager definition evaluated in float64 on the
same inputs (in bf16 the eager chain itself, rounded after every op, can be far from it).

    python bench/bench_ngpt_ops.py
    python bench/bench_ngpt_ops.py --device cpu --tokens 64 --no-graphs \
        --implementations eager,triton      # smoke test (TRITON_INTERPRET=1 for the kernels)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

from megatron_ngpt.models import triton_ops
from megatron_ngpt.models.fused import normalize_qk, residual_update


def _time_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _fwd_bwd(fn: Callable, inputs: list[torch.Tensor],
             cotangents: list[torch.Tensor]) -> Callable[[], list[torch.Tensor]]:
    """A closure running fn forward and backward that returns its outputs and input gradients."""
    leaves = [x.detach().requires_grad_() for x in inputs]

    def run() -> list[torch.Tensor]:
        for x in leaves:
            x.grad = None
        out = fn(*leaves)
        outs = list(out) if isinstance(out, tuple) else [out]
        torch.autograd.backward(outs, [c.to(o.dtype) for c, o in zip(cotangents, outs,
                                                                     strict=True)])
        return [o.detach() for o in outs] + [x.grad for x in leaves]

    return run


def _max_rel_error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """Worst over outputs and gradients of max |got - ref| / max |ref|."""
    return max(((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
               for g, r in zip(got, ref, strict=True))


@torch.no_grad()
def _forward_only(fn: Callable, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    out = fn(*inputs)
    return list(out) if isinstance(out, tuple) else [out]


def _rope(seq: int, head_dim: int, device: torch.device,
          base: float = 10000.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """megatron-core's RoPE (its unfused path) with its table for `seq` positions."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    table = torch.cat((freqs, freqs), dim=-1)[:, None, None, :].to(device)
    return lambda t: _apply_rotary_pos_emb_bshd(t, table)


def cases(args: argparse.Namespace,
          device: torch.device) -> list[tuple[str, int, Callable, dict, list]]:
    """(op, minimal bytes moved forward + backward, the eager definition,
    {implementation: fn}, inputs)."""
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    size = torch.finfo(dtype).bits // 8
    seq, batch = args.seq, max(1, args.tokens // args.seq)
    heads, d = args.heads, args.hidden
    head_dim = d // heads
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    h = F.normalize(torch.randn(seq, batch, d, generator=gen), dim=-1).to(device, dtype)
    alpha = torch.full((d,), 0.05, device=device)
    q, k = randn(seq, batch, heads, head_dim), randn(seq, batch, heads, head_dim)
    s_qk = torch.ones(d, device=device)
    tokens = seq * batch
    standalone = {"eager": lambda op: op.eager, "torch.compile": lambda op: op.compiled,
                  "triton": lambda op: op.triton}
    out = [
        # fwd: h, x -> out; bwd: g, h, x -> dh, dx
        ("residual update", 8 * tokens * d * size, residual_update.eager,
         {name: pick(residual_update) for name, pick in standalone.items()},
         [h, randn(seq, batch, d), alpha]),
        # fwd: q, k -> 2 outputs; bwd: 2 grads, q, k -> 2 grads
        ("q/k normalization", 10 * tokens * d * size, normalize_qk.eager,
         {name: pick(normalize_qk) for name, pick in standalone.items()}, [q, k, s_qk]),
    ]
    if args.graphs:
        rope = _rope(seq, head_dim, device)

        def rope_qk(norm):
            return lambda q, k, s: norm(rope(q), rope(k), s)

        def proj_residual(update):
            return lambda h, x, w, a: update(h, x @ w, a)

        def in_graph(region, op):
            return {"inductor fusion": torch.compile(region(op.eager)),
                    "triton custom op": torch.compile(region(op.triton))}

        w = randn(d, d) / math.sqrt(d)
        out += [
            ("RoPE + q/k normalization, compiled", 10 * tokens * d * size,
             rope_qk(normalize_qk.eager), in_graph(rope_qk, normalize_qk), [q, k, s_qk]),
            ("projection + residual update, compiled", 8 * tokens * d * size,
             proj_residual(residual_update.eager), in_graph(proj_residual, residual_update),
             [h, randn(seq, batch, d), w, alpha]),
        ]
    return out


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    rows = []
    for op, nbytes, definition, impls, inputs in cases(args, device):
        first_ms = None
        gen = torch.Generator().manual_seed(1)  # independent of the inputs' stream (seed 0)
        cotangents = [torch.randn(o.shape, generator=gen).to(device, o.dtype)
                      for o in _forward_only(definition, inputs)]
        reference = _fwd_bwd(definition, [x.double() for x in inputs], cotangents)()
        for name, fn in impls.items():
            if args.implementations and not any(name.startswith(i) for i in args.implementations):
                continue
            if name.startswith("triton") and not triton_ops.HAS_TRITON:
                rows.append(f"| {op} | {name} | Triton not installed | | | |")
                continue
            step = _fwd_bwd(fn, inputs, cotangents)
            try:
                error = _max_rel_error(step(), reference)
                ms = _time_ms(step, device, args.reps)
            except Exception as err:  # one broken implementation must not hide the others
                rows.append(f"| {op} | {name} | failed: {type(err).__name__}: "
                            f"{str(err).splitlines()[0][:150]} | | | |")
                continue
            first_ms = first_ms or ms
            rows.append(f"| {op} | {name} | {ms:.3f} | {nbytes / ms / 1e6:,.0f} "
                        f"| {first_ms / ms:.2f}x | {error:.1e} |")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (f"{name}, torch {torch.__version__}, {args.dtype}: {args.seq} x "
              f"{max(1, args.tokens // args.seq)} tokens, d {args.hidden}, {args.heads} heads; "
              "forward + backward, median")
    table = ["| op | implementation | fwd+bwd (ms) | GB/s at minimal traffic "
             "| speed vs the op's first row | max rel. error vs float64 |",
             "|---|---|---:|---:|---:|---:|", *rows]
    return "\n".join([header, "", *table])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--seq", type=int, default=None, help="context (default min(1024, tokens))")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the ops inside compiled regions")
    parser.add_argument("--implementations", type=lambda t: [v for v in t.split(",") if v],
                        default=[], help="only these (by prefix: eager,torch,triton,inductor)")
    parser.add_argument("--reps", type=int, default=5, help="CPU timing repetitions")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    args.seq = args.seq or min(1024, args.tokens)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
