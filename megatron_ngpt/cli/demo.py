"""The end-to-end demo on CPU: data, tokenizer, tiny nGPT vs GPT-2, export, lm-eval, report.

    python tools/demo.py [--out runs/demo] [--quick] [--full] [--force] [--nproc N]

Writes OUT/REPORT.md with the loss curves, the final validation losses, the speedup estimate from
a mini token-budget sweep, the eval table and the commands to reproduce each step. Stages that
finished before are skipped (--force redoes them). --quick trains a few steps per model; --full
adds the precision axis (fp32 vs bf16-params) and two learning rates per model (four times the
training) with a summary of the speedup by precision and budget.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from megatron_ngpt.analysis.tokens import parse_token_list
from megatron_ngpt.experiments.demo import Demo, DemoSettings, write_report
from megatron_ngpt.experiments.launch import LaunchError
from megatron_ngpt.experiments.stages import StageError, StageRunner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--quick", action="store_true", help="a few steps per model")
    parser.add_argument("--full", action="store_true",
                        help="also bf16-params and two learning rates per model")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    parser.add_argument("--nproc", type=int, default=1, help="training processes (gloo ranks)")
    parser.add_argument("--budgets", type=parse_token_list,
                        help="token budgets per model (default: 3 budgets, 82K to 328K; with "
                             "--full 41K and 82K)")
    parser.add_argument("--tasks", help="comma-separated lm-eval tasks (default: the task made "
                                         "from the held-out text, or all in --tasks-dir)")
    parser.add_argument("--tasks-dir", type=Path,
                        help="folder of lm-eval task YAMLs (default: the demo's own, "
                             "OUT/data/tasks)")
    parser.add_argument("--until", metavar="STAGE",
                        help="stop after this stage (corpus, tokenizer, preprocess, train, ...)")
    args = parser.parse_args(argv)
    settings = DemoSettings.default(args.out, args.quick, args.nproc, args.full,
                                    args.tasks.split(",") if args.tasks else None,
                                    args.tasks_dir.resolve() if args.tasks_dir else None)
    if args.budgets:
        settings.budgets = args.budgets
    # One thread per process: on 2 shared cores, 2 OpenMP threads made training 10-20x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    demo = Demo(settings)
    runner = StageRunner(demo.out / ".stages", args.force, env={"PYTHONWARNINGS": "ignore"})
    stages = demo.stages(lambda: write_report(demo, runner))
    names = [stage.name for stage in stages]
    if args.until is not None:
        if args.until not in names:
            parser.error(f"--until {args.until}: not a stage (stages: {', '.join(names)})")
        stages = stages[: names.index(args.until) + 1]
    try:
        runner.run(stages)
    except (StageError, LaunchError) as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    print(f"demo finished in {runner.elapsed()}: "
          f"{demo.report if stages[-1].name == 'report' else f'stopped after {args.until}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
