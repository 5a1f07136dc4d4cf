"""Run code on several gloo ranks with torchrun on localhost (a fresh port each time)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Left by an in-process one-rank world of another test; torchrun must choose its own.
DIST_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, *target: str, timeout: float = 900, env: dict[str, str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node nproc TARGET...`, where TARGET is `script.py args` or
    `-m module args`; output is captured and a failure shows its tail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *map(str, target)]
    full_env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    full_env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc
