"""Evaluate an exported Hugging Face model folder with lm-evaluation-harness.

    python tools/eval.py --model exports/ngpt --tasks seed --output eval/ngpt
    python tools/eval.py --model exports/ngpt --tasks tiny_choice,tiny_cloze --limit 8

"seed" is hellaswag, arc_easy, winogrande, wsc273 and lambada_openai; any lm-eval task, group or
tag works, and the packaged offline tasks in megatron_ngpt/eval/tasks need no --include-path.
Writes results.json and results.md into --output (default: <model>/eval).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_ngpt.eval.harness import (
    DatasetUnavailable,
    evaluate_hf,
    expand_tasks,
    write_results,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="exported Hugging Face folder")
    parser.add_argument("--tasks", default="seed", help="comma-separated tasks; 'seed' = all five")
    parser.add_argument("--limit", type=float, help="documents per task (a fraction if < 1)")
    parser.add_argument("--include-path", help="folder of extra lm-eval task YAMLs")
    parser.add_argument("--output", help="results folder (default: <model>/eval)")
    parser.add_argument("--batch-size", default="8", help="an integer or 'auto'")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    try:
        tasks = expand_tasks(args.tasks)
        results = evaluate_hf(args.model, tasks, limit, args.include_path, batch_size, args.device)
    except (FileNotFoundError, ValueError, DatasetUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    json_path, md_path = write_results(results, args.output or Path(args.model) / "eval",
                                       args.model, limit)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
