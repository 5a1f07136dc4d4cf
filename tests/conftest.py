"""Fixtures shared by every suite: the small real corpus, tokenizer and dataset of `tests/data`,
a one-rank process group, and the package's command-line tools as modules.

Without CUDA, Triton kernels can run only in Triton's interpreter, which must be chosen before
Triton is imported (tests/gpu/test_triton_ops.py runs the kernels on CPU through it).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from megatron_ngpt.parallel.state import ParallelDims  # noqa: E402
from tests.data.conftest import (  # noqa: E402, F401
    data_dir,
    sp_tokenizer,
    sp_tokenizer_path,
    tiny_corpus,
    tiny_dataset_prefix,
)


@pytest.fixture(scope="session")
def single_rank() -> Iterator[ParallelDims]:
    """megatron-core's process groups on a one-rank gloo world (TP=PP=1), in this process."""
    from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed

    dims = init_distributed(1, 1, "cpu")
    yield dims
    shutdown_distributed()


@pytest.fixture(scope="session")
def tool() -> Callable[[str], ModuleType]:
    """`tool("preprocess_data")` is `megatron_ngpt.cli.preprocess_data`: tests call its `main`
    in-process (a fresh interpreter would spend seconds importing megatron-core)."""
    return lambda name: importlib.import_module(f"megatron_ngpt.cli.{name}")
