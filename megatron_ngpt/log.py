"""The project's one logger: rank-aware, to stderr, named `megatron_ngpt`."""

from __future__ import annotations

import logging
import os

_NAME = "megatron_ngpt"


def get_logger() -> logging.Logger:
    logger = logging.getLogger(_NAME)
    if not logger.handlers:
        rank = os.environ.get("RANK", "0")
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank}] %(message)s",
                                               datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if rank == "0" else logging.WARNING)
        logger.propagate = False
    return logger
