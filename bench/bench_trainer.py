"""Training throughput of the real trainer: `megatron_ngpt.train` timed from its own metrics.

Each configuration is one `torchrun --standalone --nproc_per_node 1 -m megatron_ngpt.train` run:
the DeepSpeed engine (ZeRO-1, the configs' precision), the real data path over an indexed dataset
of random tokens this script writes, nGPT's renormalization, the real metrics. Step time,
tokens/s and MFU are read from the run's `metrics.jsonl` (one record per step) after the warm-up
steps, so FLOPs per token (`training.metrics.flops_per_token`) and MFU are the trainer's own; the
peak is `logging.peak_tflops`, set from `megatron_ngpt.hardware` for the GPU found.

A step is `--accumulation` micro-batches of the config's size (16k tokens on GPU: 16 x 1k,
4 x 4k), then the optimizer step; the run is stopped once its last step's metrics are written
(the final checkpoint is not timed). One markdown table, the nGPT / GPT-2 time per token at each
(context, compiled layers), and on GPU the issue's targets.

    python bench/bench_trainer.py                          # 0.5B, 1k and 4k, compiled on and off
    python bench/bench_trainer.py --seq 1024,4096,8192 --compile-layers on
    python bench/bench_trainer.py --device cpu --seq 64 --compile-layers off   # CI smoke run
    python bench/bench_trainer.py --prewarm-only           # fill the compile caches, time nothing
    python bench/bench_trainer.py --models ngpt --seq 4096 --override data.document_attention=true
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TOKENS_PER_MICRO_BATCH = 16384  # the 0.5B configs: micro-batch 16 at 1k, 4 at 4k
TOKENIZER_VOCAB = 512
DATASET_TOKENS = 1 << 20
# Issue 13's targets on one H100 (bf16, compiled layers): MFU per (model, context), and nGPT's
# time per token at most this multiple of GPT-2's.
MFU_TARGETS = {("gpt2", 4096): 0.45, ("ngpt", 4096): 0.40, ("gpt2", 1024): 0.40,
               ("ngpt", 1024): 0.35}
NGPT_OVERHEAD_TARGET = 1.10


@dataclass(frozen=True)
class RunSpec:
    arch: str
    seq: int
    compiled: bool

    @property
    def name(self) -> str:
        return f"{self.arch}_s{self.seq}_{'compiled' if self.compiled else 'eager'}"


@dataclass
class RunResult:
    spec: RunSpec
    status: str = "ok"
    micro_batch: int = 0
    timed_steps: int = 0
    step_s: float = math.nan  # mean over the timed steps
    step_range_s: tuple[float, float] = (math.nan, math.nan)
    tokens_per_s: float = math.nan
    tflops: float = math.nan
    mfu: float = math.nan
    memory_gb: float = math.nan
    wall_s: float = 0.0
    records: list[dict] = field(default_factory=list)
    log_tail: str = ""


@dataclass
class Inputs:
    """What every run shares: the dataset, the tokenizer, the folders and the settings."""

    args: argparse.Namespace
    workdir: Path
    data_prefix: str
    tokenizer: Path
    peak_tflops: float | None
    device_name: str


# ---------------------------------------------------------------------------------- inputs


def config_path(spec: RunSpec, device: str) -> Path:
    if device == "cpu":
        return CONFIGS / "tiny" / f"{spec.arch}.yaml"
    context = {1024: "1k"}.get(spec.seq, "4k")
    return CONFIGS / f"{spec.arch}_0.5b_{context}.yaml"


def micro_batch_for(spec: RunSpec, args: argparse.Namespace) -> int:
    if args.micro_batch:
        return args.micro_batch
    if args.device == "cpu":
        return 2
    return max(1, TOKENS_PER_MICRO_BATCH // spec.seq)


def write_tokenizer(workdir: Path) -> Path:
    """A small SentencePiece model trained on the offline demo corpus (the data is random ids;
    the trainer only needs the tokenizer's size and special ids)."""
    from megatron_ngpt.data.demo_corpus import iter_documents
    from megatron_ngpt.data.tokenizer_training import train_sentencepiece

    corpus = workdir / "tokenizer_corpus.txt"
    documents = iter_documents()
    corpus.write_text("\n".join(next(documents) for _ in range(60)), encoding="utf-8")
    return Path(train_sentencepiece([str(corpus)], TOKENIZER_VOCAB, str(workdir / "tokenizer"),
                                    input_sentence_size=20000))


def write_dataset(prefix: Path, vocab: int, eod: int, tokens: int = DATASET_TOKENS,
                  seed: int = 0) -> str:
    """Random token ids below `vocab` (the tokenizer's: training checks that the ids fit it) in
    documents of 512 to 4096 tokens, each ending with the tokenizer's EOD as preprocessing writes
    it (so `--override data.document_attention=true` sees real document boundaries). The 0.5B
    models' 32000-row embedding and head cost the same whichever rows the ids pick."""
    from megatron_ngpt.data.indexed import IndexedDatasetWriter, token_dtype

    rng = np.random.default_rng(seed)
    dtype = token_dtype(vocab)
    with IndexedDatasetWriter(str(prefix), dtype) as writer:
        written = 0
        while written < tokens:
            length = int(rng.integers(512, 4097))
            ids = rng.integers(3, vocab, length, dtype=np.int64)
            ids[-1] = eod
            writer.add_document(ids.astype(dtype))
            written += length
    return str(prefix)


def resolve_peak(args: argparse.Namespace) -> tuple[float | None, str]:
    """(peak TFLOP/s to pass to the trainer or None for the config's, the device's name)."""
    if args.device == "cpu":
        return args.peak_tflops, "CPU"
    import torch

    from megatron_ngpt.hardware import peak_bf16_tflops

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    peak = args.peak_tflops or peak_bf16_tflops(name)
    if peak is None:
        print(f"bench: no peak known for {name!r}: MFU uses the configs' logging.peak_tflops "
              "(pass --peak-tflops)", file=sys.stderr)
    return peak, name


# ---------------------------------------------------------------------------------- runs


def trainer_command(spec: RunSpec, inputs: Inputs, run_dir: Path, steps: int) -> list[str]:
    args = inputs.args
    micro = micro_batch_for(spec, args)
    overrides = [
        f"data.seq_length={spec.seq}",
        f"training.micro_batch_size={micro}",
        f"training.global_batch_size={micro * args.accumulation}",
        f"training.train_iters={steps}",
        "training.eval_iters=0", "training.eval_interval=0", "training.save_interval=0",
        "data.split=1,0,0", f"data.cache_dir={inputs.workdir / 'data_cache'}",
        "logging.log_interval=1", "logging.wandb=false",
        f"model.compile_layers={str(spec.compiled).lower()}",
        *args.override,
    ]
    if inputs.peak_tflops:
        overrides.append(f"logging.peak_tflops={inputs.peak_tflops}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "1", "-m", "megatron_ngpt.train", "--config", str(config_path(spec, args.device)),
            *overrides, "--save", str(run_dir), "--data-path", inputs.data_prefix,
            "--tokenizer-model", str(inputs.tokenizer), "--device", args.device,
            "--no-progress-bar"]


def trainer_env() -> dict[str, str]:
    # torchrun --standalone picks its own rendezvous; megatron-core wants one hardware queue.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONUNBUFFERED="1", CUDA_DEVICE_MAX_CONNECTIONS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def read_records(path: Path) -> list[dict]:
    """Complete lines of a metrics.jsonl that may still be growing."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    return [json.loads(line) for line in lines if line.strip()]


LIVE: set[subprocess.Popen] = set()  # trainers running now (killed if this script is)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (SIGTERM would make the trainer save a checkpoint)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        victims = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


def train(spec: RunSpec, inputs: Inputs, steps: int, timeout_s: float,
          run_dir: Path) -> RunResult:
    """Run the trainer for `steps` steps; stop it once the last step's metrics are written."""
    result = RunResult(spec, micro_batch=micro_batch_for(spec, inputs.args))
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    log_path = run_dir / "train.log"
    metrics = run_dir / "metrics.jsonl"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(trainer_command(spec, inputs, run_dir, steps), cwd=ROOT,
                                env=trainer_env(), stdout=log, stderr=subprocess.STDOUT)
        LIVE.add(proc)
        try:
            while proc.poll() is None:
                if any(r.get("step") == steps and "tokens_per_sec" in r
                       for r in read_records(metrics)):
                    break
                if time.perf_counter() - start > timeout_s:
                    result.status = f"timeout after {timeout_s:.0f} s"
                    break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
            LIVE.discard(proc)
    result.wall_s = time.perf_counter() - start
    result.records = [r for r in read_records(metrics) if "tokens_per_sec" in r]
    finished = any(r["step"] == steps for r in result.records)
    if result.status == "ok" and not finished:
        result.status = f"failed (exit code {proc.returncode})"
    if result.status != "ok":
        result.log_tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return result


def summarize(result: RunResult, warmup: int) -> RunResult:
    """Mean over the steps after `warmup`; MFU and TFLOP/s scale with tokens/s at the trainer's
    own FLOPs per token and peak (their ratio to tokens/s is the same in every record)."""
    timed = sorted((r for r in result.records if r["step"] > warmup), key=lambda r: r["step"])
    if not timed:
        if result.status == "ok":
            result.status = "no steps after the warm-up"
        return result
    result.timed_steps = len(timed)
    times = [r["step_time"] for r in timed]
    result.step_s = sum(times) / len(times)
    result.step_range_s = (min(times), max(times))
    tokens_per_step = timed[-1]["tokens"] / timed[-1]["step"]
    result.tokens_per_s = tokens_per_step / result.step_s
    reference = timed[-1]
    result.tflops = reference["tflops"] / reference["tokens_per_sec"] * result.tokens_per_s
    if reference.get("mfu") is not None:
        result.mfu = reference["mfu"] / reference["tokens_per_sec"] * result.tokens_per_s
    result.memory_gb = max(r["memory_gb"] for r in timed)
    return result


# ---------------------------------------------------------------------------------- plans


def all_specs(args: argparse.Namespace) -> list[RunSpec]:
    """In the order they run: compiled layers first (the targets), long contexts first."""
    compiled = {"on": [True], "off": [False], "both": [True, False]}[args.compile_layers]
    return [RunSpec(arch, seq, c) for c in compiled for seq in sorted(args.seq, reverse=True)
            for arch in args.models]


def prepare(args: argparse.Namespace) -> Inputs:
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    peak, device_name = resolve_peak(args)
    tokenizer = workdir / "tokenizer.model"
    if not tokenizer.is_file():
        tokenizer = write_tokenizer(workdir)
    from megatron_ngpt.data.tokenizer import load_tokenizer

    eod = load_tokenizer(str(tokenizer)).eod_id
    prefix = write_dataset(workdir / f"random_v{TOKENIZER_VOCAB}", TOKENIZER_VOCAB, eod)
    return Inputs(args, workdir, prefix, tokenizer, peak, device_name)


def prewarm(inputs: Inputs, specs: list[RunSpec], concurrency: int) -> None:
    """One step of every compiled run, `concurrency` at a time, untimed: fills torch.compile's
    on-disk caches so that the timed runs spend their time training, not compiling."""
    compiled = [s for s in specs if s.compiled]
    timeout = inputs.args.run_timeout_s

    def warm(spec: RunSpec) -> str:
        result = train(spec, inputs, 1, timeout, inputs.workdir / "prewarm" / spec.name)
        return f"prewarm {spec.name}: {result.status}, {result.wall_s:.0f} s"

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        for line in pool.map(warm, compiled):
            print(f"[bench] {line}", file=sys.stderr, flush=True)


def run_all(inputs: Inputs, specs: list[RunSpec]) -> list[RunResult]:
    """Timed runs one after another, within `--budget-s` (a run that cannot get
    `--min-run-s` is skipped, and each gets at most what is left)."""
    args = inputs.args
    start = time.perf_counter()
    results = []
    for spec in specs:
        left = args.budget_s - (time.perf_counter() - start)
        if left < args.min_run_s:
            results.append(RunResult(spec, status=f"skipped: {left:.0f} s of the budget left",
                                     micro_batch=micro_batch_for(spec, args)))
            continue
        result = train(spec, inputs, args.warmup + args.steps, min(args.run_timeout_s, left),
                       inputs.workdir / "runs" / spec.name)
        results.append(summarize(result, args.warmup))
        print(f"[bench] {time.perf_counter() - start:5.0f} s: {spec.name} {result.status} "
              f"({result.wall_s:.0f} s)", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------------------------- report


def _ok(results: list[RunResult]) -> dict[RunSpec, RunResult]:
    return {r.spec: r for r in results if r.status == "ok"}


def markdown_table(results: list[RunResult]) -> str:
    lines = ["| model | seq | compiled layers | micro-batch | steps | step (ms): mean (min-max) "
             "| tokens/s | TFLOP/s | MFU | peak mem (GiB) | status |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    order = sorted(results, key=lambda r: (not r.spec.compiled, r.spec.seq, r.spec.arch))
    for r in order:
        head = (f"| {r.spec.arch} | {r.spec.seq} | {'on' if r.spec.compiled else 'off'} "
                f"| {r.micro_batch} |")
        if math.isnan(r.step_s):
            lines.append(f"{head} | | | | | | {r.status} |")
            continue
        low, high = (t * 1e3 for t in r.step_range_s)
        lines.append(f"{head} {r.timed_steps} | {r.step_s * 1e3:.1f} ({low:.1f}-{high:.1f}) "
                     f"| {r.tokens_per_s:,.0f} "
                     f"| {r.tflops:.4g} | {r.mfu:.1%} | {r.memory_gb:.1f} | {r.status} |")
    return "\n".join(lines)


def ngpt_overhead(results: list[RunResult], seq: int, compiled: bool) -> float | None:
    """nGPT / GPT-2 time per token at (seq, compiled layers), where both ran."""
    ok = _ok(results)
    ngpt, gpt2 = ok.get(RunSpec("ngpt", seq, compiled)), ok.get(RunSpec("gpt2", seq, compiled))
    return gpt2.tokens_per_s / ngpt.tokens_per_s if ngpt and gpt2 else None


def overhead_lines(results: list[RunResult]) -> list[str]:
    return [f"- seq {seq}, compiled layers {'on' if compiled else 'off'}: nGPT / GPT-2 time per "
            f"token = {ratio:.3f}"
            for seq in sorted({r.spec.seq for r in results}) for compiled in (True, False)
            if (ratio := ngpt_overhead(results, seq, compiled)) is not None]


def _verdict(value: float | None, ok: bool, text: str) -> str:
    return "not measured" if value is None else f"{text} ({'met' if ok else 'MISSED'})"


def target_lines(results: list[RunResult]) -> list[str]:
    """The issue's targets (one H100, bf16, compiled layers): met, missed or not measured."""
    ok = _ok(results)
    lines = []
    for (arch, seq), target in sorted(MFU_TARGETS.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        mfu = r.mfu if (r := ok.get(RunSpec(arch, seq, True))) else None
        got = _verdict(mfu, mfu is not None and mfu >= target, f"{mfu or 0:.1%}")
        lines.append(f"- {arch} MFU at {seq}, compiled layers: target >= {target:.0%}: {got}")
    for seq in (4096, 1024):
        ratio = ngpt_overhead(results, seq, True)
        got = _verdict(ratio, ratio is not None and ratio <= NGPT_OVERHEAD_TARGET,
                       f"{ratio or 0:.3f}")
        lines.append(f"- nGPT / GPT-2 time per token at {seq}, compiled layers: target <= "
                     f"{NGPT_OVERHEAD_TARGET:.2f}: {got}")
    return lines


def describe(args: argparse.Namespace, inputs: Inputs) -> str:
    import torch

    peak = f"{inputs.peak_tflops:g} TFLOP/s" if inputs.peak_tflops else "the configs' peak"
    return (f"{inputs.device_name}, torch {torch.__version__}; megatron_ngpt.train under "
            f"torchrun, 1 rank, the configs' ZeRO stage and precision; a step = "
            f"{args.accumulation} micro-batches + optimizer step; {args.warmup} warm-up + "
            f"{args.steps} timed steps; MFU against {peak}")


def format_report(args: argparse.Namespace, inputs: Inputs, results: list[RunResult]) -> str:
    sections = [describe(args, inputs), "", markdown_table(results)]
    overheads = overhead_lines(results)
    if overheads:
        sections += ["", *overheads]
    if args.device == "cuda":
        sections += ["", "Targets (issue 13, one H100):", *target_lines(results)]
    for r in results:
        if r.log_tail:
            sections += ["", f"<details><summary>{r.spec.name}: {r.status}</summary>", "",
                         "```", r.log_tail, "```", "</details>"]
    return "\n".join(sections)


def write_raw(path: Path, results: list[RunResult]) -> None:
    """Every run's metrics records in one JSONL file, each tagged with its run's name."""
    with path.open("w") as out:
        for r in results:
            for record in r.records:
                out.write(json.dumps({"run": r.spec.name, **record}) + "\n")


# ---------------------------------------------------------------------------------- CLI


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _model_list(text: str) -> list[str]:
    models = [v for v in text.split(",") if v]
    if not models or set(models) - {"ngpt", "gpt2"}:
        raise argparse.ArgumentTypeError(f"models are ngpt and/or gpt2, got {text!r}")
    return models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 3)[-1])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the tiny configs (configs/tiny), as CI runs it")
    parser.add_argument("--models", type=_model_list, default=["ngpt", "gpt2"])
    parser.add_argument("--seq", type=_int_list, default=None,
                        help="contexts (default 1024,4096; cpu: 64,128)")
    parser.add_argument("--compile-layers", choices=("on", "off", "both"), default="both")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (8; cpu: 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed first steps (3; cpu: 1)")
    parser.add_argument("--accumulation", type=int, default=4,
                        help="micro-batches per step (4: the 1k configs' share per GPU on 8 GPUs)")
    parser.add_argument("--micro-batch", type=int, default=0,
                        help=f"default: {TOKENS_PER_MICRO_BATCH} tokens on GPU, 2 on CPU")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="MFU peak (default: by GPU name from megatron_ngpt.hardware)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra trainer override for every run (repeatable)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_trainer"))
    parser.add_argument("--budget-s", type=float, default=1e9,
                        help="wall time for all timed runs; later runs are skipped past it")
    parser.add_argument("--min-run-s", type=float, default=30.0,
                        help="do not start a run with less of the budget left")
    parser.add_argument("--run-timeout-s", type=float, default=600.0)
    parser.add_argument("--prewarm", type=int, default=0, metavar="N",
                        help="first run every compiled configuration for one step, N at a time")
    parser.add_argument("--prewarm-only", action="store_true",
                        help="only the prewarm (N = --prewarm or 1), no timed runs")
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    parser.add_argument("--raw", type=Path, default=None,
                        help="write every run's metrics records here (JSONL)")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    args.seq = args.seq or ([64, 128] if cpu else [1024, 4096])
    args.steps = args.steps if args.steps is not None else (2 if cpu else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 3)
    return args


def _stop(signum, frame) -> None:
    """On SIGTERM (a `timeout` around this script): no trainer may outlive it on the GPU."""
    for proc in list(LIVE):
        kill_tree(proc)
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    specs = all_specs(args)
    inputs = prepare(args)
    if args.prewarm or args.prewarm_only:
        prewarm(inputs, specs, args.prewarm or 1)
    if args.prewarm_only:
        return 0
    results = run_all(inputs, specs)
    report = format_report(args, inputs, results)
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")
    if args.raw is not None:
        write_raw(args.raw, results)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
