"""Preprocessing throughput: tools/preprocess_data.py vs Megatron-LM's, same tokenizer and workers.

    python bench/bench_preprocess.py --mb 50 --workers 1 2 [--megatron-lm PATH]

Builds a jsonl corpus of about `--mb` MB by repeating the demo corpus, trains a SentencePiece
tokenizer on the demo corpus unless `--tokenizer-model` is given, then times each tool end to end
(a fresh process each, so both pay their start-up) and prints a markdown table. `--megatron-lm`
is a Megatron-LM checkout at the tag matching the installed megatron-core (core_v0.16.1); its
tools/preprocess_data.py imports `megatron.training`, whose package __init__ needs GPU-only
modules, so the runner below stands in for that __init__ (only the submodules the tool uses are
loaded). Without the checkout its rows are skipped. The outputs of both tools are compared byte
for byte.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEGATRON_LM_RUNNER = """
import runpy, sys, types
checkout = sys.argv.pop(1)
sys.path.insert(0, checkout)
def _unused(name):
    if name.startswith("_"):
        raise AttributeError(name)
    return lambda *args, **kwargs: None
package = types.ModuleType("megatron.training")
package.__path__ = [checkout + "/megatron/training"]
package.__file__ = checkout + "/megatron/training/__init__.py"
package.__getattr__ = _unused
sys.modules["megatron.training"] = package
sys.argv[0] = checkout + "/tools/preprocess_data.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_corpus(path: Path, megabytes: float) -> int:
    from megatron_ngpt.data.demo_corpus import iter_documents

    lines = [json.dumps({"text": text}) + "\n" for text in iter_documents()]
    written, target = 0, int(megabytes * 1e6)
    with path.open("w") as stream:
        while written < target:
            for line in lines:
                stream.write(line)
                written += len(line.encode())
                if written >= target:
                    break
    return written


def count_tokens(prefix: str) -> int:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)  # keep it alive: its arrays are views of its memory map
    return int(dataset.sequence_lengths.sum())


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokenizer-model", help="default: train a 32000-piece SentencePiece")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--megatron-lm", help="Megatron-LM checkout (tag core_v0.16.1)")
    parser.add_argument("--work-dir", help="default: a temporary folder")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_preprocess_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    size = make_corpus(corpus, args.mb)
    tokenizer = args.tokenizer_model
    if tokenizer is None:
        from megatron_ngpt.data.demo_corpus import write_demo_corpus
        from megatron_ngpt.data.tokenizer_training import train_sentencepiece

        write_demo_corpus(work / "demo.jsonl")
        tokenizer = train_sentencepiece([str(work / "demo.jsonl")], args.vocab_size,
                                        str(work / "tokenizer"), num_threads=2)
    runner = work / "megatron_lm_runner.py"
    runner.write_text(MEGATRON_LM_RUNNER)

    rows = []
    for workers in args.workers:
        ours = str(work / f"ours_w{workers}")
        seconds = timed([sys.executable, "tools/preprocess_data.py", "--quiet", "--input",
                         str(corpus), "--tokenizer-model", tokenizer, "--output-prefix", ours,
                         "--workers", str(workers)])
        rows.append(("megatron-ngpt", workers, seconds, ours + "_text_document"))
        if args.megatron_lm:
            theirs = str(work / f"megatron_lm_w{workers}")
            seconds = timed([sys.executable, str(runner), args.megatron_lm, "--input",
                             str(corpus), "--output-prefix", theirs, "--tokenizer-type",
                             "SentencePieceTokenizer", "--tokenizer-model", tokenizer,
                             "--workers", str(workers), "--append-eod"])
            rows.append(("Megatron-LM", workers, seconds, theirs + "_text_document"))

    print(f"\ncorpus: {size / 1e6:.1f} MB jsonl, tokenizer: {tokenizer}\n")
    print("| tool | workers | seconds | tokens/s | MB/s | same output as ours |")
    print("|---|---|---|---|---|---|")
    reference = {w: Path(prefix + ".bin").read_bytes() + Path(prefix + ".idx").read_bytes()
                 for tool, w, _, prefix in rows if tool == "megatron-ngpt"}
    seconds_of = {}
    for tool, workers, seconds, prefix in rows:
        output = Path(prefix + ".bin").read_bytes() + Path(prefix + ".idx").read_bytes()
        same = "yes" if output == reference[workers] else "NO"
        seconds_of[tool, workers] = seconds
        print(f"| {tool} | {workers} | {seconds:.1f} | {count_tokens(prefix) / seconds:,.0f} | "
              f"{size / 1e6 / seconds:.2f} | {same} |")
    for workers in args.workers:
        if ("Megatron-LM", workers) in seconds_of:
            ratio = seconds_of["Megatron-LM", workers] / seconds_of["megatron-ngpt", workers]
            print(f"\nworkers={workers}: megatron-ngpt is {ratio:.2f}x Megatron-LM's speed")


if __name__ == "__main__":
    main()
