"""One run per run directory: rank 0 holds an exclusive lock on ``RUN_DIR/.lock`` while it trains.

Two runs writing checkpoints into one folder would prune and overwrite each other's work. The lock
is `fcntl.flock` (released by the kernel when the process ends, so a killed run leaves no stale
lock); the file names the holder, for the message the second run prints.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


class RunDirectoryBusy(RuntimeError):
    """Another process trains into the same run directory."""


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryBusy(
                f"{self.path.parent}: another run trains into this directory ({holder}); wait "
                "for it to end or use another --save") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
