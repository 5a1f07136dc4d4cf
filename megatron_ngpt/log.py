"""The project's one logger (rank-aware, to stderr, named `megatron_ngpt`) and what the console
shows: rank 0 speaks, the other ranks only on error, and warnings known to be harmless in this
set-up are dropped by message and module (everything else still shows).

`configure_console` runs at import of the package, so before megatron-core and DeepSpeed load
and warn; `ignore_cuda_advice` is added by `parallel.state.init_distributed` on CPU runs.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

_NAME = "megatron_ngpt"

# (message, category, module): the start of the message and the warning module's name, as
# regular expressions (`warnings.filterwarnings`).
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # megatron-core without Transformer Engine or Apex uses its local implementations, as we do.
    ("Transformer Engine and Apex are not installed", UserWarning, r"megatron\.core\."),
    # megatron-core 0.16 warns about its own default `cuda_graph_scope="full"`.
    ("full scope is deprecated", UserWarning, r"megatron\.core\.transformer\.transformer_config"),
    # DeepSpeed's ZeRO calls these collectives; nothing in this project does.
    (r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
     FutureWarning, r"torch\.distributed\.c10d_logger"),
)
# megatron-core's advice for CUDA kernel scheduling, which means nothing on CPU.
CUDA_ADVICE: tuple[tuple[str, type[Warning], str], ...] = (
    ("When using .* it is recommended to set the environment variable "
     "CUDA_DEVICE_MAX_CONNECTIONS", UserWarning, r"megatron\.core\.tensor_parallel\.layers"),
)
# Messages of DeepSpeed's logger: the CPU accelerator is chosen exactly when torch sees no GPU.
HARMLESS_DEEPSPEED_LOGS = ("Setting accelerator to CPU",)


def process_rank() -> int:
    """This process's global rank, from torchrun or SLURM (before any process group exists)."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def get_logger() -> logging.Logger:
    logger = logging.getLogger(_NAME)
    if not logger.handlers:
        rank = process_rank()
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank}] %(message)s",
                                               datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if rank == 0 else logging.ERROR)
        logger.propagate = False
    return logger


class _ConsoleFilter(logging.Filter):
    """Drops records below `min_level` and those whose message starts with one of `drop`.

    A filter rather than a level, because DeepSpeed sets its logger's level when it loads."""

    def __init__(self, min_level: int, drop: tuple[str, ...]) -> None:
        super().__init__()
        self.min_level = min_level
        self.drop = re.compile("|".join(map(re.escape, drop)))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.min_level and not self.drop.match(record.getMessage())


def configure_console() -> None:
    """Drop the known-harmless warnings; on ranks other than 0, everything below an error
    (our logger, DeepSpeed's and megatron-core's loggers, Python warnings)."""
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message, category, module)
    quiet = process_rank() != 0
    deepspeed_logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _ConsoleFilter) for f in deepspeed_logger.filters):
        deepspeed_logger.addFilter(_ConsoleFilter(logging.ERROR if quiet else logging.NOTSET,
                                                  HARMLESS_DEEPSPEED_LOGS))
    if quiet:
        logging.getLogger("megatron").setLevel(logging.ERROR)
        warnings.simplefilter("ignore")


def ignore_cuda_advice() -> None:
    for message, category, module in CUDA_ADVICE:
        warnings.filterwarnings("ignore", message, category, module)
