"""DeepSpeed's communication starts without its shared-memory op (`start_deepspeed_comm`)."""

from __future__ import annotations

import importlib

import pytest

from megatron_ngpt.parallel import deepspeed_internals
from megatron_ngpt.parallel.deepspeed_internals import DeepSpeedLayoutError, start_deepspeed_comm


def test_deepspeed_comm_starts_without_building_the_shared_memory_op(single_rank):
    """The op is built (or loaded from ~/.cache/torch_extensions) only by `build_shm_op`;
    DeepSpeed's backend holds None where it would hold the op, and the function is restored."""
    comm = importlib.import_module("deepspeed.comm.comm")
    assert comm.cdb is not None and comm.cdb.shm_comm_op is None
    assert deepspeed_internals.deepspeed_comm_torch.build_shm_op.__name__ == "build_shm_op"


def test_another_deepspeed_start_up_is_refused_naming_the_version(monkeypatch):
    backend = deepspeed_internals.deepspeed_comm_torch.TorchBackend
    monkeypatch.setattr(backend, "__init__", lambda self, *args, **kwargs: None)
    with pytest.raises(DeepSpeedLayoutError, match=r"DeepSpeed \S+: TorchBackend no longer"):
        start_deepspeed_comm("gloo")
