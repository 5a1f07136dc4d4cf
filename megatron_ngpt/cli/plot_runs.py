"""Plot runs and estimate the speedup of nGPT over GPT-2.

    python tools/plot_runs.py RUN_DIR... [--sweep MANIFEST_OR_DIR] --out DIR

Draws training and validation loss against tokens for the runs; with --sweep, per (precision,
context), the final-loss-vs-tokens curves (best learning rate per point), the speedup table and
the final losses of every run, and with several groups a summary of the speedup by precision x
context x budget (printed and written to DIR/speedup.md). Without --sweep, one run of each model
gives a rough estimate from their validation curves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_ngpt.analysis.compare import compare
from megatron_ngpt.analysis.runs import RunError
from megatron_ngpt.experiments.manifest import SweepError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run directories (with metrics.jsonl)")
    parser.add_argument("--sweep", type=Path, help="sweep.json or the sweep folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for PNGs and speedup.md")
    parser.add_argument("--baseline", default="gpt2", help="model the speedup is measured against")
    parser.add_argument("--candidate", default="ngpt")
    args = parser.parse_args(argv)
    if not args.runs and args.sweep is None:
        parser.error("give run directories, --sweep, or both")
    try:
        result = compare(args.runs, args.out, args.sweep, args.baseline, args.candidate)
    except (RunError, SweepError, ValueError) as err:
        print(f"plot_runs: {err}", file=sys.stderr)
        return 1
    if result.markdown:
        print(result.markdown)
    for path in result.files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
