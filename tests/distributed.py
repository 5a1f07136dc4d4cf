"""Run code on several gloo ranks: the trainer under torchrun, or any function with `run_on_ranks`.

`run_on_ranks(n, "package.module:function", *args)` is the one way tests run a function on `n`
ranks (after OLMo-core's `run_distributed_test`): torchrun starts `n` fresh interpreters (megatron-
core and DeepSpeed keep global state, so ranks cannot share a process with the test), each starts
gloo, calls the function with the JSON-able `args`, and the return values come back by rank.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# Left by an in-process one-rank world of another test; torchrun must choose its own.
DIST_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without rank variables, one OpenMP thread, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return env


def torchrun(nproc: int, *target: str, timeout: float = 900, env: dict[str, str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc TARGET...`, where TARGET is `script.py args` or
    `-m module args`; output is captured and a failure shows its tail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *map(str, target)]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(**(env or {})), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def run_on_ranks(nproc: int, target: str, *args: Any, timeout: float = 600,
                 env: dict[str, str] | None = None) -> list[Any]:
    """Call ``module:function(*args)`` on `nproc` gloo ranks; returns each rank's return value."""
    with tempfile.TemporaryDirectory() as tmp:
        torchrun(nproc, "-m", "tests.ranks", target, json.dumps(args), tmp, timeout=timeout,
                 env=env)
        return [torch.load(Path(tmp) / f"rank{rank}.pt", weights_only=False)
                for rank in range(nproc)]
