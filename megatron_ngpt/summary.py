"""Parameter table of the model a config describes, built instantly on the meta device.

    python -m megatron_ngpt.summary CONFIG.yaml [key=value ...]

The model is the real `LanguageModel` (TP=1, megatron-core's local layers; Transformer Engine
layers have the same parameters), built under ``torch.device("meta")`` so no memory is allocated.
Parameters repeated in every layer are printed once with their multiplicity. The last line is
``Total parameters: N`` with the exact count.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

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


def model_vocab_size(cfg: Config) -> int:
    """`model.vocab_size`, or the tokenizer's padded like training pads it at TP=1."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if not cfg.data.tokenizer_model:
        raise ConfigError("model.vocab_size: 0 means 'from the tokenizer'; set model.vocab_size=N "
                          "or data.tokenizer_model=PATH")
    from megatron_ngpt.data.tokenizer import load_tokenizer

    return cfg.model_vocab_size(load_tokenizer(cfg.data.tokenizer_model).vocab_size, 1)


def summarize(cfg: Config) -> str:
    """Build the model of `cfg` on the meta device and return its parameter table.

    Starts (and ends) its own one-process torch.distributed world: call it where none runs.
    """
    # Not news for a parameter count: megatron's notes about missing TE/Apex and deprecations,
    # and its per-layer warning that it does not know the nGPT MLP class.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    logging.getLogger("megatron.core").setLevel(logging.ERROR)
    from megatron_ngpt.models.language_model import LanguageModel
    from megatron_ngpt.models.transformer_config import build_transformer_config
    from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed

    vocab = model_vocab_size(cfg)
    # A private one-process world: no port, and no rendezvous with the ranks of a torchrun or
    # SLURM job whose variables the calling shell may carry.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    init_distributed(1, 1, "cpu")
    try:
        with torch.device("meta"):
            model = LanguageModel(build_transformer_config(cfg.model, vocab))
        return format_table(parameter_rows(model.named_parameters()))
    finally:
        shutdown_distributed()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    try:
        print(summarize(load_config(args[0], args[1:])))
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
