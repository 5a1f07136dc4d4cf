"""Writing megatron-core indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``) all-or-nothing.

megatron-core's :class:`IndexedDatasetBuilder` writes straight to its target names, so a crash
leaves a ``.bin`` without a valid ``.idx`` that a later training run would trip over. Here it
writes to temporary names beside the targets and renames them into place only on success; on any
exception (Ctrl-C, a full disk included) the temporaries are removed. Beside the pair goes
``PREFIX.meta.json``, the facts training checks without reading the .bin (see integrity.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDataset,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)

from megatron_ngpt.data.files import DataError, os_reason, remove_quietly
from megatron_ngpt.data.integrity import DatasetFacts, IndexInfo, facts_path, inspect_dataset


def token_dtype(vocab_size: int) -> type[np.number]:
    """uint16 while every id fits (vocab < 65500, megatron-core's rule), else int32."""
    return DType.optimal_dtype(vocab_size)


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: one dataset per json key, ``{prefix}_{key}_document``."""
    return f"{output_prefix}_{key}_document"


class IndexedDatasetWriter:
    """Context manager: documents go in, the dataset appears at `prefix` only on a clean exit.
    Several datasets that must appear together are written with :func:`writing_datasets`."""

    def __init__(self, prefix: str, dtype: type[np.number]):
        self.prefix = prefix
        self.dtype = dtype
        self.num_documents = 0
        self.num_tokens = 0
        tag = f".tmp{os.getpid()}"
        self._targets = (get_bin_path(prefix), get_idx_path(prefix), facts_path(prefix))
        self._temporaries = tuple(target + tag for target in self._targets)
        self._token_range: tuple[int, int] | None = None
        with self._writing(self._targets[0]):
            Path(prefix).parent.mkdir(parents=True, exist_ok=True)
            self._builder = IndexedDatasetBuilder(self._temporaries[0], dtype=dtype)

    @contextmanager
    def _writing(self, target: str) -> Iterator[None]:
        """An OSError (read-only folder, full disk) becomes one line naming the output."""
        try:
            yield
        except OSError as err:
            raise DataError(f"{target}: cannot write: {os_reason(err)}") from None

    def _widen_token_range(self, low: int, high: int) -> None:
        if self._token_range is not None:
            low, high = min(low, self._token_range[0]), max(high, self._token_range[1])
        self._token_range = (low, high)

    def add_document(self, tokens: np.ndarray) -> None:
        """One document stored as one sequence (megatron-core GPTDataset's expectation)."""
        tokens = np.asarray(tokens, dtype=self.dtype)
        if tokens.size:
            self._widen_token_range(int(tokens.min()), int(tokens.max()))
        with self._writing(self._targets[0]):
            self._builder.add_document(tokens, [tokens.size])
        self.num_documents += 1
        self.num_tokens += tokens.size

    def add_dataset(self, prefix: str) -> None:
        """Append a whole existing dataset, keeping its document boundaries. It is validated
        first: a corrupt index must not spread into the output."""
        facts = inspect_dataset(prefix)
        if facts.dtype != np.dtype(self.dtype).name:
            raise DataError(f"{prefix}: token dtype {facts.dtype} differs from "
                            f"{np.dtype(self.dtype).name}; datasets from tokenizers with "
                            "different vocab sizes cannot be merged")
        if facts.min_token_id is not None:
            self._widen_token_range(facts.min_token_id, facts.max_token_id)
        with self._writing(self._targets[0]):
            self._builder.add_index(prefix)
        self.num_documents += facts.documents
        self.num_tokens += facts.tokens

    def finalize(self) -> None:
        """Write the index and the facts under their temporary names."""
        bin_tmp, idx_tmp, facts_tmp = self._temporaries
        with self._writing(self._targets[1]):
            self._builder.finalize(idx_tmp)
        info = IndexInfo(np.dtype(self.dtype), len(self._builder.sequence_lengths),
                         self.num_documents, self.num_tokens)
        facts = DatasetFacts.of_files(bin_tmp, idx_tmp, info, self._token_range)
        with self._writing(self._targets[2]), open(facts_tmp, "wb") as stream:
            stream.write(facts.to_json())

    def publish(self) -> None:
        """Rename the finished files into place; renaming keeps the modification times the
        facts recorded. The .bin and .idx first: a crash in between leaves facts that do not
        describe them, which are then ignored."""
        for temporary, target in zip(self._temporaries, self._targets, strict=True):
            with self._writing(target):
                os.replace(temporary, target)

    def abort(self) -> None:
        try:
            self._builder.data_file.close()
        except OSError:
            pass  # flushing the rest fails again on a full disk; the file goes anyway
        for temporary in self._temporaries:
            remove_quietly(temporary)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.finalize()
            self.publish()
        except BaseException:
            self.abort()
            raise


@contextmanager
def writing_datasets(prefixes: list[str], dtype: type[np.number]
                     ) -> Iterator[list[IndexedDatasetWriter]]:
    """Writers for several datasets that appear together or not at all (one per json key):
    all are finalized before any is renamed into place."""
    writers: list[IndexedDatasetWriter] = []
    try:
        for prefix in prefixes:
            writers.append(IndexedDatasetWriter(prefix, dtype))
        yield writers
        for writer in writers:
            writer.finalize()
        for writer in writers:
            writer.publish()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise


def merge_datasets(prefixes: list[str], output_prefix: str) -> int:
    """Concatenate datasets in order into `output_prefix`; returns the number of documents."""
    if not prefixes:
        raise ValueError("nothing to merge")
    for prefix in prefixes:
        if not IndexedDataset.exists(prefix):
            raise FileNotFoundError(f"{prefix}: no {prefix}.bin/.idx pair")
    dtype = np.dtype(inspect_dataset(prefixes[0]).dtype).type
    with IndexedDatasetWriter(output_prefix, dtype) as writer:
        for prefix in prefixes:
            writer.add_dataset(prefix)
    return writer.num_documents
