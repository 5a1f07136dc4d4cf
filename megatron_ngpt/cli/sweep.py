"""Launch a token-budget sweep for the speedup estimate (cosine runs, or WSD cooldown branches).

Complete runs per (model, budget, precision, context, learning rate), or WSD stable runs and
their cooldown branches:

    python tools/sweep.py --models ngpt,gpt2 --budgets 1M,2M,4M --base-config configs/tiny \\
        --out runs/sweep [--precisions fp32,bf16] [--contexts 128,256] \\
        [--lrs ngpt=1e-2,2e-2 gpt2=1e-3,3e-3 | --lrs 1e-3,3e-3] \\
        [--schedule cosine|wsd --decay-fraction 0.2 --decay-shape 1-sqrt] \\
        [--launcher local|slurm] [--nproc N] [--sbatch-arg=OPTION ...] [--dry-run] \\
        [-- trainer args]

Cosine (default): each run gets training.train_tokens = budget (its own schedule to the end) and
a warmup cut to --max-warmup-fraction of its steps. WSD: one stable run per (model, precision,
context, learning rate) keeps a checkpoint at every budget's decay start, and a cooldown branch
per budget decays from there. A context keeps the tokens per step: the global batch becomes
tokens per step / sequence length. The manifest runs/sweep/sweep.json lists the runs; completed
runs are skipped when the sweep is started again. Analyse with
``python tools/plot_runs.py --sweep runs/sweep --out runs/sweep/plots``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_ngpt.analysis.tokens import parse_token_list
from megatron_ngpt.config import ConfigError, resolve_config_path
from megatron_ngpt.experiments.launch import LaunchError, run_local, submit_slurm
from megatron_ngpt.experiments.manifest import SweepError, write_manifest
from megatron_ngpt.experiments.sweep import WsdSettings, parse_lrs, plan_sweep


def parse_args(argv: list[str]) -> argparse.Namespace:
    trainer_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own_args = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ngpt,gpt2", help="comma-separated model names")
    parser.add_argument("--budgets", required=True, type=parse_token_list,
                        help="comma-separated token budgets, e.g. 1M,2M,4M")
    parser.add_argument("--precisions", type=_names,
                        help="comma-separated training.precision values (default: the config's)")
    parser.add_argument("--contexts", type=_integers,
                        help="comma-separated sequence lengths at the config's tokens per step")
    parser.add_argument("--lrs", nargs="+", default=[], metavar="[MODEL=]LR,LR",
                        help="learning rates: a list for every model, or MODEL=LR,LR per model")
    parser.add_argument("--schedule", choices=("cosine", "wsd"), default="cosine",
                        help="cosine: complete runs; wsd: stable runs and cooldown branches")
    parser.add_argument("--decay-fraction", type=float, default=WsdSettings.decay_fraction,
                        help="wsd: the share of each budget's steps that decays")
    parser.add_argument("--decay-shape", choices=("linear", "1-sqrt", "cosine"),
                        default=WsdSettings.decay_shape)
    parser.add_argument("--base-config", type=Path,
                        help="folder with one {model}.yaml per model (e.g. configs/tiny)")
    parser.add_argument("--base-config-ngpt", type=Path)
    parser.add_argument("--base-config-gpt2", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="sweep folder")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--nproc", type=int, default=1,
                        help="ranks per run: torchrun processes (local), tasks per node (SLURM)")
    parser.add_argument("--max-warmup-fraction", type=float, default=0.05,
                        help="longest warmup, as a fraction of a run's steps")
    parser.add_argument("--sbatch-arg", action="append", default=[],
                        help="extra sbatch option (repeatable), e.g. --sbatch-arg=--nodes=2")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(own_args)
    args.trainer_args = trainer_args
    return args


def _names(text: str) -> list[str]:
    names = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} lists nothing")
    return names


def _integers(text: str) -> list[int]:
    try:
        values = sorted({int(item) for item in _names(text)})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers") from None
    if values[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sequence lengths must be positive")
    return values


def base_configs(args: argparse.Namespace, models: list[str]) -> dict[str, Path]:
    """Each model's config file; names of packaged configs (configs/tiny) work from anywhere."""
    configs = {}
    for model in models:
        explicit = getattr(args, f"base_config_{model}", None)
        if explicit is None and args.base_config is None:
            raise SweepError(f"no config for {model!r}: give --base-config DIR or "
                             f"--base-config-{model} FILE")
        path = explicit if explicit is not None else args.base_config / f"{model}.yaml"
        try:
            configs[model] = resolve_config_path(path)
        except ConfigError as err:
            raise SweepError(f"base config for {model!r}: {err}") from None
    return configs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        wsd = (WsdSettings(args.decay_fraction, args.decay_shape)
               if args.schedule == "wsd" else None)
        sweep = plan_sweep(models, args.budgets, base_configs(args, models), args.out,
                           args.trainer_args, args.max_warmup_fraction,
                           precisions=args.precisions, contexts=args.contexts,
                           lrs=parse_lrs(args.lrs, models), wsd=wsd,
                           world_size=args.nproc if args.launcher == "local" else None)
        if not args.dry_run:
            print(f"sweep manifest: {write_manifest(sweep)}")
        if args.launcher == "local":
            run_local(sweep, args.nproc, args.dry_run)
        else:
            submit_slurm(sweep, args.sbatch_arg, args.dry_run, tasks_per_node=args.nproc)
    except (SweepError, ConfigError, LaunchError) as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
