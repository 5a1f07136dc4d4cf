"""The memory plan (`megatron_ngpt.memory`) against measured memory of real DeepSpeed steps on CPU.

    python bench/bench_memory.py [--models ngpt,gpt2] [--precisions bf16,fp32] [--zero 0,1,2,3]
                                 [--dp 1] [--checkpointing] [--compiled-ngpt] [--output FILE.md]

Each case builds the tiny config scaled up (``--hidden``, ``--ffn``, ``--layers``, ``--vocab``,
``--seq``, ``--micro-batch``) so that weights, optimizer states and activations are tens to
hundreds of MB, starts the project's DeepSpeed engine (`build_engine`) and runs two training
steps under ``torch.profiler`` with memory profiling. Every CPU allocation and free of the
process is an event; their running sum is the live memory, read at the phases of the second
step (the first one creates the optimizer states). What torch and DeepSpeed allocated before the
engine is not counted. The plan is computed with ``fused=False`` (CPU runs the eager nGPT
normalizations and torch's composite RMSNorm). With ``--dp N`` the cases run on N gloo ranks
(torchrun) and rank 0 reports its own memory, which checks the partitioning over DP.
``--compiled-ngpt`` adds one nGPT layer whose normalizations run ``torch.compile``d as on GPU
(compiling takes a while on CPU), against the plan's GPU layer term (``fused=True``).

Rows per case, formula vs measured (MiB):

- resident: the live memory when the second step starts (weights, masters, Adam moments,
  resident gradient buffers);
- kept by forward: what the forward pass leaves for backward (layers, head, fp32 softmax; and
  ZeRO-3's gathered parameters);
- forward/backward peak: the highest point of forward + backward above the resident memory
  (activations, transient logits, ZeRO's reduce bucket);
- gradients after backward, step temporaries (highest point of the step above its start);
- peak: the highest point of the whole second step.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_ngpt import memory  # noqa: E402
from megatron_ngpt.config import Config, load_config  # noqa: E402

MiB = 2**20
PHASES = ("forward", "backward", "step")


@dataclass(frozen=True)
class Case:
    arch: str
    precision: str
    zero: int
    checkpointing: bool

    @property
    def name(self) -> str:
        ckpt = " ckpt" if self.checkpointing else ""
        return f"{self.arch} {self.precision} ZeRO-{self.zero}{ckpt}"


def case_config(case: Case, args: argparse.Namespace, dp: int) -> Config:
    return load_config(REPO / "configs" / "tiny" / f"{case.arch}.yaml", [
        f"model.vocab_size={args.vocab}", f"model.hidden_size={args.hidden}",
        f"model.ffn_hidden_size={args.ffn}", f"model.num_layers={args.layers}",
        f"parallel.zero_stage={case.zero}",
        f"parallel.activation_checkpointing={str(case.checkpointing).lower()}",
        f"training.precision={case.precision}", f"data.seq_length={args.seq}",
        f"training.micro_batch_size={args.micro_batch}",
        f"training.global_batch_size={args.micro_batch * dp}",
    ])


class LiveMemory:
    """Live bytes over time from the profiler's allocation events, with named phase spans."""

    def __init__(self, prof) -> None:
        events = prof.profiler.kineto_results.events()
        allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        self.times = [t for t, _ in allocations]
        self.live = []
        total = 0
        for _, nbytes in allocations:
            total += nbytes
            self.live.append(total)
        self.spans = {e.name(): (e.start_ns(), e.start_ns() + e.duration_ns())
                      for e in events if e.name() in PHASES}

    def at(self, time_ns: int) -> int:
        i = bisect.bisect_right(self.times, time_ns) - 1
        return self.live[i] if i >= 0 else 0

    def peak(self, start: int, end: int) -> int:
        i, j = bisect.bisect_left(self.times, start), bisect.bisect_right(self.times, end)
        return max([self.at(start), *self.live[i:j]])

    def phase(self, name: str) -> tuple[int, int, int]:
        """Live bytes at the start and end of a phase, and its peak."""
        start, end = self.spans[name]
        return self.at(start), self.at(end), self.peak(start, end)


def phase(name: str, step: int):
    return record_function(name) if step else contextlib.nullcontext()


def measure(case: Case, args: argparse.Namespace) -> dict[str, float]:
    """Run the case's two steps under the profiler; the second step's figures, in bytes."""
    from megatron_ngpt.models.transformer_config import build_transformer_config
    from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed
    from megatron_ngpt.training.engine import build_engine

    dims = init_distributed(1, 1, "cpu")
    cfg = case_config(case, args, dims.dp)
    dtype = torch.bfloat16 if case.precision == "bf16" else torch.float32
    model_config = build_transformer_config(cfg.model, args.vocab, 1, 1, dtype,
                                            activation_checkpointing=case.checkpointing)
    generator = torch.Generator().manual_seed(dims.rank)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        engine = build_engine(cfg, model_config, dims, total_steps=10).engine
        for step in range(2):
            batch = torch.randint(0, args.vocab, (args.micro_batch, args.seq + 1),
                                  generator=generator)
            # Only the second step is split into phases; the first creates the Adam moments.
            with phase(PHASES[0], step):
                loss = engine(batch[:, :-1], labels=batch[:, 1:])
            with phase(PHASES[1], step):
                engine.backward(loss)
            del loss
            with phase(PHASES[2], step):
                engine.step()
    live = LiveMemory(prof)
    shutdown_distributed()
    fwd_start, fwd_end, fwd_peak = live.phase("forward")
    _, bwd_end, bwd_peak = live.phase("backward")
    step_start, _, step_peak = live.phase("step")
    return {
        "resident": fwd_start,
        "kept by forward": fwd_end - fwd_start,
        "forward/backward peak": max(fwd_peak, bwd_peak) - fwd_start,
        "gradients after backward": bwd_end - fwd_start,
        "step temporaries": step_peak - step_start,
        "peak": max(fwd_peak, bwd_peak, step_peak),
    }


def formula(case: Case, args: argparse.Namespace, dp: int) -> dict[str, float]:
    cfg = case_config(case, args, dp)
    layout = memory.layout_from_config(cfg, dp)
    p = memory.plan(cfg, args.vocab, layout, case.precision, fused=False)
    acts = p.activations_checkpointed if case.checkpointing else p.activations
    logits = memory.logits_transient_bytes(cfg, layout, case.precision, args.vocab)
    return {
        "resident": p.resident,
        "kept by forward": acts - logits + p.zero3_gathered,
        "forward/backward peak": p.forward_backward(case.checkpointing),
        "gradients after backward": p.backward_gradients,
        "step temporaries": p.step_temporaries,
        "peak": p.peak(case.checkpointing),
    }


def compiled_ngpt_layer(args: argparse.Namespace) -> list[str]:
    """One nGPT layer with its normalizations ``torch.compile``d (the GPU forward, forced onto
    CPU tensors): the plan's ``fused=True`` layer term against what autograd keeps."""
    from megatron_ngpt.models import fused
    from megatron_ngpt.models.language_model import TransformerLayerStage
    from megatron_ngpt.models.transformer_config import build_transformer_config
    from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed

    fused.CudaCompiled.__call__ = lambda self, *xs, use_compiled=True: (
        self.compiled if use_compiled else self.eager)(*xs)
    init_distributed(1, 1, "cpu")
    lines = []
    for precision in args.precisions.split(","):
        cfg = case_config(Case("ngpt", precision, 1, False), args, 1)
        layout = memory.layout_from_config(cfg, 1)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        layer = TransformerLayerStage(build_transformer_config(cfg.model, args.vocab,
                                                               params_dtype=dtype), 1).to(dtype)
        hidden = torch.randn(args.seq, args.micro_batch, args.hidden, dtype=dtype,
                             requires_grad=True)
        got = memory.kept_for_backward(functools.partial(layer, hidden), list(layer.parameters()))
        value = memory.layer_activation_bytes(cfg, layout, precision, fused=True)
        lines.append(f"| ngpt {precision} one layer, compiled normalizations | kept by forward | "
                     f"{value / MiB:.1f} | {got / MiB:.1f} | {100 * (value - got) / got:+.1f}% |")
    shutdown_distributed()
    return lines


def report(case: Case, predicted: dict[str, float], measured: dict[str, float]) -> list[str]:
    lines = []
    for term, value in predicted.items():
        got = measured[term]
        error = f"{100 * (value - got) / got:+.1f}%" if got > MiB else "-"
        lines.append(f"| {case.name} | {term} | {value / MiB:.1f} | {got / MiB:.1f} | {error} |")
    return lines


def cases(args: argparse.Namespace) -> list[Case]:
    found = [Case(a, p, int(z), False) for a in args.models.split(",")
             for p in args.precisions.split(",") for z in args.zero.split(",") if z]
    if args.checkpointing:
        found += [Case(a, p, 1, True) for a in args.models.split(",")
                  for p in args.precisions.split(",")]
    return found


def worker(args: argparse.Namespace) -> None:
    """One rank of one case (a child process, so that every case starts from a fresh world)."""
    if args.worker == "compiled":
        print("\n".join(compiled_ngpt_layer(args)), flush=True)
        return
    arch, precision, zero, ckpt = args.worker.split(":")
    case = Case(arch, precision, int(zero), ckpt == "1")
    measured = measure(case, args)
    if int(os.environ.get("RANK", "0")) == 0:
        dp = int(os.environ.get("WORLD_SIZE", "1"))
        print("\n".join(report(case, formula(case, args, dp), measured)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ngpt,gpt2")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--zero", default="0,1,2,3", help="ZeRO stages ('' for none)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="also ZeRO-1 with activation checkpointing")
    parser.add_argument("--dp", type=int, default=1, help="data-parallel ranks (torchrun)")
    parser.add_argument("--compiled-ngpt", action="store_true",
                        help="also one nGPT layer with torch.compile'd normalizations")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    lines = ["| case | term | formula MiB | measured MiB | error |", "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    shape = [f"--{name.replace('_', '-')}={getattr(args, name)}"
             for name in ("hidden", "ffn", "layers", "vocab", "seq", "micro_batch")]
    specs = {case.name: f"{case.arch}:{case.precision}:{case.zero}:{int(case.checkpointing)}"
             for case in cases(args)}
    if args.compiled_ngpt and "ngpt" in args.models:
        specs["compiled nGPT layer"] = "compiled"
    for name, spec in specs.items():
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={args.dp}"] if args.dp > 1 and spec != "compiled" \
            else [sys.executable]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([*launcher, __file__, *shape, f"--precisions={args.precisions}",
                               "--worker", spec], env=env, capture_output=True, text=True,
                              cwd=REPO)
        rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
        if proc.returncode or not rows:
            rows = [f"| {name} | failed (exit {proc.returncode}): "
                    f"{proc.stderr.strip().splitlines()[-1:]} | | | |"]
        print("\n".join(rows), flush=True)
        lines += rows
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
