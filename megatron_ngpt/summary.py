"""Parameter table and memory plan of the model a config describes, without a GPU.

    python -m megatron_ngpt.summary CONFIG.yaml [key=value ...] [--gpus N] [--gpu-memory GiB]

The parameter table comes from the real `LanguageModel` (TP=1, megatron-core's local layers;
Transformer Engine layers have the same parameters), built under ``torch.device("meta")`` so no
memory is allocated. Parameters repeated in every layer are printed once with their
multiplicity; ``Total parameters: N`` gives the exact count. The memory plan that follows
(`megatron_ngpt.memory`) is per GPU for the config's TP x PP on ``--gpus`` GPUs (default: one
8-GPU node, as the sbatch scripts run, or as many of its GPUs as split the global batch), for
each precision regime.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_ngpt import memory
from megatron_ngpt.config import Config, ConfigError, load_config
from megatron_ngpt.data.files import DataError

_LAYER = re.compile(r"^layers\.(\d+)\.layer\.")


@dataclass
class ParamRow:
    """One parameter name, with `*` for the layer index when it repeats in every layer."""

    name: str
    shape: tuple[int, ...]
    copies: int = 1

    @property
    def numel(self) -> int:
        return self.copies * int(torch.Size(self.shape).numel())


def parameter_rows(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> list[ParamRow]:
    """Rows in model order; ``layers.<i>.layer.X`` of every layer fold into ``layers.*.X``."""
    rows: dict[tuple[str, tuple[int, ...]], ParamRow] = {}
    for name, param in named_parameters:
        key = (_LAYER.sub("layers.*.", name), tuple(param.shape))
        if key in rows:
            rows[key].copies += 1
        else:
            rows[key] = ParamRow(key[0], key[1])
    return list(rows.values())


def human(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"


def format_table(rows: list[ParamRow]) -> str:
    """The table, a per-part subtotal line, and ``Total parameters: N`` last."""
    width = max(len(r.name) for r in rows)
    lines = [f"{'parameter':<{width}}  {'shape':>12}  {'x':>3}  {'count':>13}"]
    for r in rows:
        shape = " x ".join(map(str, r.shape))
        lines.append(f"{r.name:<{width}}  {shape:>12}  {r.copies:>3}  {r.numel:>13,}")
    parts: dict[str, int] = {}
    for r in rows:
        part = r.name.split(".", 1)[0]
        parts[part] = parts.get(part, 0) + r.numel
    total = sum(parts.values())
    lines.append("")
    lines.append(", ".join(f"{part} {human(n)}" for part, n in parts.items()) + f"; {human(total)}")
    lines.append(f"Total parameters: {total}")
    return "\n".join(lines)


def model_vocab_size(cfg: Config, tensor_parallel: int = 1) -> int:
    """`model.vocab_size`, or the tokenizer's padded like training pads it at this TP size."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if not cfg.data.tokenizer_model:
        raise ConfigError("model.vocab_size: 0 means 'from the tokenizer'; set model.vocab_size=N "
                          "or data.tokenizer_model=PATH")
    from megatron_ngpt.data.tokenizer import load_tokenizer

    size = load_tokenizer(cfg.data.tokenizer_model).vocab_size
    return cfg.model_vocab_size(size, tensor_parallel)


def quiet_megatron() -> None:
    """Not news for a summary: megatron's notes about missing TE/Apex and deprecations, and its
    per-layer warning that it does not know the nGPT MLP class."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    logging.getLogger("megatron.core").setLevel(logging.ERROR)


def import_megatron_to_build_only() -> None:
    """Import megatron-core without the start-up work of what a summary never runs.

    megatron-core wraps its fused kernels in ``torch.compile`` when it is imported, which loads
    Inductor (about 3 s of CPU); here they stay plain functions. Its inference context imports
    wandb when installed (about 1 s). Both are restored for later imports; the process must not
    train afterwards with megatron's own fused kernels (this project's layers do not use them).
    """
    if "megatron.core" in sys.modules:
        return
    quiet_megatron()
    compile_ = torch.compile
    torch.compile = _not_compiled  # type: ignore[assignment]
    blocked = sys.modules.setdefault("wandb", None) is None
    try:
        import megatron.core  # noqa: F401
    finally:
        torch.compile = compile_
        if blocked:
            del sys.modules["wandb"]


def _not_compiled(model=None, **options):
    """`torch.compile`'s signature, as a decorator (with or without options) that does nothing."""
    return model if model is not None else (lambda fn: fn)


@contextlib.contextmanager
def private_model_parallel_world() -> Iterator[None]:
    """megatron-core's parallel state at TP = PP = 1 on a one-process gloo group of its own.

    The store is in memory: no port, and no rendezvous with the ranks of a torchrun or SLURM job
    whose variables the calling shell may carry. Nothing of DeepSpeed is imported (building a
    model needs megatron-core's groups, not a data-parallel engine).
    """
    from megatron.core import parallel_state

    from megatron_ngpt.parallel.cpu_compat import apply_cpu_compat

    apply_cpu_compat()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def summarize(cfg: Config) -> str:
    """Build the model of `cfg` on the meta device and return its parameter table.

    Starts (and ends) its own one-process torch.distributed world: call it where none runs.
    """
    quiet_megatron()
    from megatron_ngpt.models.language_model import LanguageModel
    from megatron_ngpt.models.transformer_config import build_transformer_config

    vocab = model_vocab_size(cfg)
    with private_model_parallel_world(), torch.device("meta"):
        model = LanguageModel(build_transformer_config(cfg.model, vocab))
        return format_table(parameter_rows(model.named_parameters()))


def memory_plan(cfg: Config, world_size: int, gpu_memory_gib: float) -> str:
    """The memory plan table of `cfg` on `world_size` GPUs, one column per precision regime."""
    vocab = model_vocab_size(cfg, cfg.parallel.tensor_model_parallel_size)
    layout = memory.layout_from_config(cfg, world_size)
    plans = [memory.plan(cfg, vocab, layout, regime) for regime in memory.REGIMES]
    return memory.format_plan(cfg, layout, plans, gpu_memory_gib)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_ngpt.summary", description=__doc__.strip().splitlines()[0])
    parser.add_argument("config", help="YAML config")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--gpus", "--world-size", dest="gpus", type=int, default=None,
                        help="GPUs of the run (default: one 8-GPU node, or as many of them as "
                             "split the global batch)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, metavar="GiB",
                        help="memory of one GPU (default 80)")
    args = parser.parse_args(argv)
    if args.gpus is not None and args.gpus < 1:
        parser.error("--gpus must be at least 1")
    if args.gpu_memory <= 0:
        parser.error("--gpu-memory must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import_megatron_to_build_only()
    try:
        cfg = load_config(args.config, args.overrides)
        plan = memory_plan(cfg, args.gpus or memory.default_world_size(cfg), args.gpu_memory)
        print(summarize(cfg))
        print()
        print(plan)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
