"""Training entry point.

    torchrun --nproc_per_node N -m megatron_ngpt.train --config CONFIG.yaml [key=value ...] [flags]

Rank, world size and addresses come from torchrun or SLURM. Megatron-style flags win over the
YAML and over `key=value` overrides. With `--save RUN_DIR` pointing at a run that has a
checkpoint, training resumes from its latest complete checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import torch
import yaml

from megatron_ngpt.config import (
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    padded_vocab_size,
)
from megatron_ngpt.log import get_logger
from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed

# flag -> (config key, type)
FLAGS: dict[str, tuple[str, type]] = {
    "--tensor-model-parallel-size": ("parallel.tensor_model_parallel_size", int),
    "--pipeline-model-parallel-size": ("parallel.pipeline_model_parallel_size", int),
    "--zero-stage": ("parallel.zero_stage", int),
    "--micro-batch-size": ("training.micro_batch_size", int),
    "--global-batch-size": ("training.global_batch_size", int),
    "--seq-length": ("data.seq_length", int),
    "--train-iters": ("training.train_iters", int),
    "--train-tokens": ("training.train_tokens", int),
    "--exit-interval": ("training.exit_interval", int),
    "--tokenizer-model": ("data.tokenizer_model", str),
    "--precision": ("training.precision", str),
    "--seed": ("training.seed", int),
    "--lr": ("optimizer.lr", float),
    "--log-interval": ("logging.log_interval", int),
    "--save": ("training.save", str),
    "--save-interval": ("training.save_interval", int),
    "--load": ("training.load", str),
    "--eval-interval": ("training.eval_interval", int),
    "--eval-iters": ("training.eval_iters", int),
    "--device": ("training.device", str),
}


def parse_args(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(prog="python -m megatron_ngpt.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    parser.add_argument("--data-path", nargs="+", help="dataset prefixes, optionally weighted: "
                        "'PREFIX' or 'W1 PREFIX1 W2 PREFIX2'")
    parser.add_argument("--activation-checkpointing", action="store_true", default=None)
    parser.add_argument("--no-progress-bar", action="store_true")
    for flag, (_, kind) in FLAGS.items():
        parser.add_argument(flag, type=kind)
    args = parser.parse_intermixed_args(argv)  # overrides may follow the flags
    cfg = load_config(args.config, args.overrides)
    flags = [f"{key}={value}" for flag, (key, _) in FLAGS.items()
             if (value := getattr(args, flag[2:].replace("-", "_"))) is not None]
    apply_overrides(cfg, flags)
    if args.data_path:
        cfg.data.data_path = args.data_path
    if args.activation_checkpointing:
        cfg.parallel.activation_checkpointing = True
    if args.no_progress_bar:
        cfg.logging.progress_bar = False
    return cfg.validate()


def total_steps(cfg: Config) -> int:
    t = cfg.training
    if t.train_iters:
        return t.train_iters
    if t.train_tokens:
        tokens_per_step = t.global_batch_size * cfg.data.seq_length
        return max(1, -(-t.train_tokens // tokens_per_step))
    raise ConfigError("training.train_iters: set train_iters or train_tokens (a token budget)")


def main(argv: list[str] | None = None) -> int:
    # Imports that start DeepSpeed/megatron-core stay here so `--help` is instant.
    from megatron_ngpt.data.datasets import build_datasets
    from megatron_ngpt.data.tokenizer import load_tokenizer
    from megatron_ngpt.models.language_model import backend_for, build_transformer_config
    from megatron_ngpt.training.checkpoint import resolve_step
    from megatron_ngpt.training.engine import build_engine
    from megatron_ngpt.training.loop import Trainer
    from megatron_ngpt.training.metrics import flops_per_token

    log = get_logger()
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        steps = total_steps(cfg)
        if not cfg.training.save:
            raise ConfigError("training.save: set the run directory (--save RUN_DIR)")
        if not cfg.data.tokenizer_model:
            raise ConfigError("data.tokenizer_model: set --tokenizer-model PATH")
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    p, t = cfg.parallel, cfg.training
    dims = init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                            t.device)
    try:
        cfg.validate(dims.world_size)
        torch.manual_seed(t.seed)
        tokenizer = load_tokenizer(cfg.data.tokenizer_model)
        vocab = cfg.model.vocab_size or padded_vocab_size(
            tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, dims.tp)
        if vocab < tokenizer.vocab_size:
            raise ConfigError(f"model.vocab_size: {vocab} is smaller than the tokenizer's "
                              f"{tokenizer.vocab_size}")
        cfg.model.vocab_size = vocab
        run_dir = Path(t.save)
        if dims.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        model_config = build_transformer_config(
            cfg.model, vocab, dims.tp, dims.pp,
            torch.bfloat16 if t.precision == "bf16" else torch.float32,
            p.activation_checkpointing, init_seed=t.seed)
        engine = build_engine(cfg, model_config, dims, steps, backend_for(cfg.model))
        evals = steps // t.eval_interval + 1 if t.eval_interval else 1
        num_samples = (steps * t.global_batch_size, evals * t.eval_iters * t.global_batch_size,
                       t.eval_iters * t.global_batch_size)
        datasets = build_datasets(cfg.data, tokenizer, cfg.data.seq_length, num_samples, t.seed,
                                  cfg.data.cache_dir or str(run_dir / "data_cache"))
        trainer = Trainer(cfg, dims, engine, datasets, steps, run_dir,
                          flops_per_token(cfg, vocab))
        found = resolve_step(t.load or run_dir)
        if found is not None:
            trainer.resume(found[0])
        elif t.load:
            raise ConfigError(f"training.load: no complete checkpoint under {t.load}")
        log.info("training %s: %d steps, TP=%d PP=%d DP=%d ZeRO-%d, %s, renormalization: %s",
                 cfg.model.arch, steps, dims.tp, dims.pp, dims.dp, p.zero_stage, t.precision,
                 engine.renormalization)
        code = trainer.train()
    except ConfigError as err:
        log.error("config error: %s", err)
        code = 2
    except Exception:
        # Other ranks may be waiting in a collective: leave at once instead of hanging in
        # the process-group teardown, and let the launcher see the failure.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    shutdown_distributed()
    return code


if __name__ == "__main__":
    sys.exit(main())
