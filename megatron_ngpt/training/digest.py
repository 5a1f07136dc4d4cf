"""File checksums for checkpoints: xxh3-128, computed while the file is written.

A 0.5B checkpoint is about 13 GB (bf16 model, fp32 masters and Adam moments, the layout-independent
fp32 copies): hashing the bytes on their way to disk costs one pass over memory at ~10 GB/s
(`bench/bench_checksum.py`), where reading them back would cost a pass over the disk. Verifying
before a load or an export reads the files once (which the load does anyway).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import xxhash

ALGORITHM = "xxh3_128"
_CHUNK = 1 << 24


class HashingWriter:
    """A write-only binary file that hashes what goes through it; `close` fsyncs and returns
    the file's digest."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._hash = xxhash.xxh3_128()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self._file.write(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> dict[str, Any]:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return {"size": self.size, ALGORITHM: self._hash.hexdigest()}


def save_hashed(obj: Any, path: str | Path) -> dict[str, Any]:
    """`torch.save(obj, path)` through a `HashingWriter`; returns the file's digest."""
    writer = HashingWriter(path)
    try:
        torch.save(obj, writer)
    finally:
        digest = writer.close()
    return digest


def write_hashed(path: str | Path, data: bytes) -> dict[str, Any]:
    """Write `data` to `path` (fsynced); returns its digest."""
    writer = HashingWriter(path)
    try:
        writer.write(data)
    finally:
        digest = writer.close()
    return digest


def file_digest(path: str | Path) -> dict[str, Any]:
    """Read `path` and return its digest (for verification)."""
    hasher = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return {"size": size, ALGORITHM: hasher.hexdigest()}
