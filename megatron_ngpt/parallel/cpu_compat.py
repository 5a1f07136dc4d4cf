"""Every CPU workaround for megatron-core's CUDA-only paths, in one place.

megatron-core asks `torch.cuda.current_device()` for the device of buffers it creates (RoPE
frequencies, tensor-parallel helpers). Without CUDA that call raises, so it is pointed at the CPU.
Applied only when CUDA is absent; on GPU machines nothing here runs.
"""

from __future__ import annotations

import torch

_applied = False


def apply_cpu_compat() -> bool:
    """Patch the CUDA-only calls megatron-core makes; returns True when the patch is active."""
    global _applied
    if torch.cuda.is_available():
        return False
    if not _applied:
        torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
        _applied = True
    return True
