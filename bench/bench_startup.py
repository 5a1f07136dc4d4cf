"""Start-up time: from launch to the first logged step of a tiny 2-rank CPU run, and the model
summary, each against its target.

Every run starts in a fresh state where another Python environment built DeepSpeed's JIT ops
last: `TORCH_EXTENSIONS_DIR` points at an empty folder. A folder that another environment built
into holds a `build.ninja` with that environment's include paths, so torch's extension loader
recompiles every source there, which costs what an empty folder costs; the empty folder
reproduces it without a second environment. "warm" rows reuse the folder of the run before.

The first step's time is when rank 0 writes the first line of `metrics.jsonl` (step 1, logged
at once with `--log-interval 1`). CPU seconds are those of every process of the run; on a
machine shared with other work, wall time grows with the load (printed), CPU time much less.

    python bench/bench_startup.py [--repeats 1] [--nproc 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY_CONFIG = "configs/ngpt_0.5b_1k.yaml"
TARGETS = {"summary": 10.0, "first step": 15.0}
TINY = ["--config", "configs/tiny/ngpt.yaml", "model.num_layers=2", "model.hidden_size=64",
        "model.num_attention_heads=4", "model.ffn_hidden_size=128", "data.seq_length=32",
        "data.split=90,10,0", "training.micro_batch_size=2", "training.global_batch_size=8",
        "training.eval_interval=0", "--device", "cpu", "--log-interval", "1",
        "--train-iters", "2"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def environment(extensions: Path) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {**{k: v for k, v in os.environ.items() if k not in drop},
            "TORCH_EXTENSIONS_DIR": str(extensions), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def make_dataset(folder: Path) -> tuple[str, str]:
    """A tokenizer and an indexed dataset from 120 documents of the demo corpus."""
    from megatron_ngpt.data.demo_corpus import iter_documents
    from megatron_ngpt.data.preprocess import preprocess
    from megatron_ngpt.data.tokenizer_training import train_sentencepiece

    corpus = folder / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as stream:
        for text in itertools.islice(iter_documents(), 120):
            stream.write(json.dumps({"text": text}) + "\n")
    tokenizer = train_sentencepiece([str(corpus)], 1000, str(folder / "sp"),
                                    input_sentence_size=20000)
    stats = preprocess(str(folder / "tiny"), str(tokenizer), [str(corpus)], progress=False)
    return stats.outputs[0], str(tokenizer)


def first_step(nproc: int, data: tuple[str, str], run_dir: Path, extensions: Path
               ) -> tuple[float, float, float]:
    """(seconds to the first metrics line, CPU seconds, seconds to the end) of one run."""
    metrics = run_dir / "metrics.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "megatron_ngpt.train", *TINY,
           "--data-path", data[0], "--tokenizer-model", data[1], "--save", str(run_dir)]
    cpu, start = children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=environment(extensions),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = None
    while proc.poll() is None and first is None:
        if metrics.exists() and metrics.read_text().strip():
            first = time.perf_counter() - start
        time.sleep(0.02)
    output = proc.communicate()[0]
    end = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"training run failed ({proc.returncode}):\n{output[-4000:]}")
    return first if first is not None else end, children_cpu() - cpu, end


def summary(extensions: Path) -> tuple[float, float]:
    cpu, start = children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "megatron_ngpt.summary", SUMMARY_CONFIG],
                          cwd=REPO, env=environment(extensions), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"summary failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start, children_cpu() - cpu


def imports_only(extensions: Path) -> tuple[float, float]:
    """One process importing what the trainer imports (torch, DeepSpeed, megatron-core)."""
    cpu, start = children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", "import megatron_ngpt.train, "
                    "megatron_ngpt.training.trainer"], cwd=REPO, env=environment(extensions),
                   check=True, capture_output=True)
    return time.perf_counter() - start, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_dataset(root)
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        for repeat in range(args.repeats):
            fresh = [Path(tempfile.mkdtemp(dir=root, prefix="extensions")) for _ in range(3)]
            rows.setdefault("imports only (1 process)", []).append(imports_only(fresh[0]))
            rows.setdefault("summary, fresh extensions folder", []).append(summary(fresh[1]))
            for label in ("fresh extensions folder", "warm (same folder again)"):
                run = first_step(args.nproc, data, root / f"run{repeat}{label[0]}", fresh[2])
                rows.setdefault(f"first step, {label}", []).append(run)
    print(f"median of {args.repeats}; {args.nproc}-rank runs: tiny nGPT, 2 steps\n")
    print("| what | seconds | CPU seconds (all processes, whole run) | run total | target |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        medians = [statistics.median(column) for column in zip(*values, strict=True)]
        seconds, cpu, total = medians if len(medians) == 3 else (*medians, None)
        target = next((f"< {t:.0f} s" for key, t in TARGETS.items() if name.startswith(key)), "")
        print(f"| {name} | {seconds:.1f} | {cpu:.1f} | "
              f"{'' if total is None else f'{total:.1f}'} | {target} |")


if __name__ == "__main__":
    main()
