"""Writing megatron-core indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``) all-or-nothing.

megatron-core's :class:`IndexedDatasetBuilder` writes straight to its target names, so a crash
leaves a ``.bin`` without a valid ``.idx`` that a later training run would trip over. Here it
writes to temporary names beside the targets and renames them into place only on success; on any
exception (Ctrl-C included) the temporaries are removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDataset,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)


def token_dtype(vocab_size: int) -> type[np.number]:
    """uint16 while every id fits (vocab < 65500, megatron-core's rule), else int32."""
    return DType.optimal_dtype(vocab_size)


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: one dataset per json key, ``{prefix}_{key}_document``."""
    return f"{output_prefix}_{key}_document"


class IndexedDatasetWriter:
    """Context manager: documents go in, the dataset appears at `prefix` only on a clean exit."""

    def __init__(self, prefix: str, dtype: type[np.number]):
        self.prefix = prefix
        self.dtype = dtype
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp{os.getpid()}"
        self._bin_tmp = get_bin_path(prefix) + tag
        self._idx_tmp = get_idx_path(prefix) + tag
        self._builder = IndexedDatasetBuilder(self._bin_tmp, dtype=dtype)
        self.num_documents = 0

    def add_document(self, tokens: np.ndarray) -> None:
        """One document stored as one sequence (megatron-core GPTDataset's expectation)."""
        self._builder.add_document(tokens, [len(tokens)])
        self.num_documents += 1

    def add_dataset(self, prefix: str) -> None:
        """Append a whole existing dataset, keeping its document boundaries."""
        dtype = IndexedDataset(prefix, mmap=True).index.dtype
        if dtype != self.dtype:
            raise ValueError(f"{prefix}: token dtype {np.dtype(dtype).name} differs from "
                             f"{np.dtype(self.dtype).name}; datasets from tokenizers with "
                             "different vocab sizes cannot be merged")
        self._builder.add_index(prefix)

    def commit(self) -> None:
        self._builder.finalize(self._idx_tmp)
        os.replace(self._bin_tmp, get_bin_path(self.prefix))
        os.replace(self._idx_tmp, get_idx_path(self.prefix))

    def abort(self) -> None:
        self._builder.data_file.close()
        for path in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def merge_datasets(prefixes: list[str], output_prefix: str) -> int:
    """Concatenate datasets in order into `output_prefix`; returns the number of documents."""
    if not prefixes:
        raise ValueError("nothing to merge")
    for prefix in prefixes:
        if not IndexedDataset.exists(prefix):
            raise FileNotFoundError(f"{prefix}: no {prefix}.bin/.idx pair")
    dtype = IndexedDataset(prefixes[0], mmap=True).index.dtype
    with IndexedDatasetWriter(output_prefix, dtype) as writer:
        for prefix in prefixes:
            writer.add_dataset(prefix)
    merged = IndexedDataset(output_prefix, mmap=True)  # its arrays live as long as it does
    return len(merged.document_indices) - 1
