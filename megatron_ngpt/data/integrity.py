"""Checks on indexed datasets before training reads them, and the recorded facts that keep the
checks cheap.

:func:`validate_index` reads ``PREFIX.idx`` as megatron-core would and refuses, in one line that
names the file and what is wrong, anything megatron-core would misread. megatron-core itself only
asserts the header, the version and the last document boundary: a flipped byte elsewhere (a
negative length, a pointer past the end of the ``.bin``) surfaces thousands of steps later as a
crash or as silently wrong samples. The checks are vectorised passes over the index only
(about 20 bytes per document), never over the ``.bin``.

:class:`DatasetFacts` is what training needs to know about the tokens without reading the
``.bin``: the smallest and largest token id (checked against the vocabulary), the SHA-1 of the
``.idx`` (the key of the index caches: the document, sample and shuffle indices megatron-core
caches depend on the ``.idx`` alone), and counts. Our writer records them beside the dataset in
``PREFIX.meta.json``. They are trusted only while the ``.bin`` and ``.idx`` still have the size
and modification time (ns) recorded with them; a dataset without trusted facts (made by another
tool, copied without its times, or regenerated) is scanned once and the result kept in the data
cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, get_bin_path, get_idx_path

from megatron_ngpt.data.files import DataError, file_sha1, os_reason, write_files_atomically
from megatron_ngpt.log import get_logger

INDEX_MAGIC = b"MMIDIDX\x00\x00"  # megatron-core's _INDEX_HEADER
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, boundary count
# Token dtypes megatron-core can write; its float codes (6, 7) can hold no token id.
_TOKEN_DTYPES = {d.value: np.dtype(d.name) for d in DType if d.name.startswith(("int", "uint"))}
_CHUNK = 1 << 24  # elements per vectorised step: bounded memory whatever the dataset size
FACTS_SUFFIX = ".meta.json"
FACTS_FORMAT = 1
log = get_logger()


@dataclass(frozen=True)
class IndexInfo:
    """What a valid index says: its token dtype and counts."""

    dtype: np.dtype
    sequences: int
    documents: int
    tokens: int


def _index_arrays(idx_path: str, sequences: int, boundaries: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence lengths, sequence pointers and document boundaries, memory-mapped."""
    data = np.memmap(idx_path, dtype=np.uint8, mode="r")
    offset = _HEADER.size
    lengths = np.frombuffer(data, np.int32, sequences, offset)
    pointers = np.frombuffer(data, np.int64, sequences, offset + 4 * sequences)
    documents = np.frombuffer(data, np.int64, boundaries, offset + 12 * sequences)
    return lengths, pointers, documents


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def validate_index(prefix: str) -> IndexInfo:
    """Raise DataError naming the file unless ``PREFIX.idx`` is a well-formed index whose
    sequences tile ``PREFIX.bin`` exactly: known magic, version 1, an integer token dtype, a
    size that matches its counts, lengths >= 0, each sequence starting where the previous one
    ends (the first at 0, the last ending at the end of the .bin), and document boundaries that
    start at 0, never decrease and end at the number of sequences."""
    idx_path, bin_path = get_idx_path(prefix), get_bin_path(prefix)
    try:
        idx_size, bin_size = os.path.getsize(idx_path), os.path.getsize(bin_path)
        with open(idx_path, "rb") as stream:
            header = stream.read(_HEADER.size)
    except OSError as err:
        raise DataError(f"{err.filename}: cannot read: {os_reason(err)}") from None

    def bad(reason: str) -> DataError:
        return DataError(f"{idx_path}: {reason}")

    if len(header) < _HEADER.size:
        raise bad(f"{idx_size} bytes, shorter than an index header ({_HEADER.size} bytes)")
    magic, version, code, sequences, boundaries = _HEADER.unpack(header)
    if magic != INDEX_MAGIC:
        raise bad(f"not a megatron-core index (starts with {magic!r}, not {INDEX_MAGIC!r})")
    if version != 1:
        raise bad(f"index version {version}, expected 1")
    if code not in _TOKEN_DTYPES:
        known = ", ".join(f"{c} {d.name}" for c, d in sorted(_TOKEN_DTYPES.items()))
        raise bad(f"token dtype code {code} is not an integer type megatron-core writes ({known})")
    dtype = _TOKEN_DTYPES[code]
    expected = _HEADER.size + 12 * sequences + 8 * boundaries
    if idx_size not in (expected, expected + sequences):  # + a mode byte per sequence (multimodal)
        raise bad(f"{idx_size} bytes, but its header announces {sequences} sequences and "
                  f"{boundaries} document boundaries ({expected} bytes): truncated or corrupt")
    if boundaries < 1:
        raise bad("no document boundaries (even an empty index has one, 0)")
    lengths, pointers, documents = _index_arrays(idx_path, sequences, boundaries)
    if sequences and pointers[0] != 0:
        raise bad(f"sequence 0 starts at byte {pointers[0]}, not 0")
    for start in range(0, sequences, _CHUNK):
        stop = min(start + _CHUNK, sequences)
        length, begin = lengths[start:stop].astype(np.int64), pointers[start:stop]
        if (i := _first(length < 0)) is not None:
            raise bad(f"sequence {start + i} has a negative length ({length[i]})")
        if (i := _first((begin < 0) | (begin > bin_size))) is not None:
            raise bad(f"sequence {start + i} starts at byte {begin[i]}, outside {bin_path} "
                      f"({bin_size} bytes)")
        end = begin + length * dtype.itemsize
        following = pointers[start + 1:stop + 1]
        if (i := _first(following != end[:following.size])) is not None:
            raise bad(f"sequence {start + i + 1} starts at byte {following[i]}, but sequence "
                      f"{start + i} ends at byte {end[i]} ({length[i]} {dtype.name} tokens)")
    token_bytes = int(pointers[-1] + lengths[-1].astype(np.int64) * dtype.itemsize) \
        if sequences else 0
    if token_bytes != bin_size:
        raise DataError(f"{bin_path}: {bin_size} bytes, but {idx_path} describes {token_bytes} "
                        "bytes of tokens: the two are not one pair, or one of them is truncated")
    if documents[0] != 0:
        raise bad(f"document boundary 0 is {documents[0]}, not 0")
    for start in range(0, boundaries - 1, _CHUNK):
        stop = min(start + _CHUNK, boundaries - 1)
        before, after = documents[start:stop], documents[start + 1:stop + 1]
        if (i := _first(after < before)) is not None:
            raise bad(f"document boundary {start + i + 1} ({after[i]}) is smaller than the one "
                      f"before it ({before[i]})")
    if documents[-1] != sequences:
        raise bad(f"the last document boundary is {documents[-1]}, but there are {sequences} "
                  "sequences")
    return IndexInfo(dtype, sequences, boundaries - 1, token_bytes // dtype.itemsize)


def _stamp(path: str) -> dict[str, int]:
    """Size and modification time: a file rewritten in place or replaced changes them."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class DatasetFacts:
    """Facts about ``PREFIX.bin``/``.idx``, valid while both files keep their stamps."""

    bin: dict[str, int]
    idx: dict[str, int]
    idx_sha1: str
    dtype: str
    sequences: int
    documents: int
    tokens: int
    min_token_id: int | None  # None: no tokens at all
    max_token_id: int | None

    @classmethod
    def of_files(cls, bin_path: str, idx_path: str, info: IndexInfo,
                 token_range: tuple[int, int] | None) -> DatasetFacts:
        low, high = token_range if token_range else (None, None)
        return cls(_stamp(bin_path), _stamp(idx_path), file_sha1(idx_path), info.dtype.name,
                   info.sequences, info.documents, info.tokens, low, high)

    def describes(self, prefix: str, info: IndexInfo) -> bool:
        try:
            stamps = _stamp(get_bin_path(prefix)), _stamp(get_idx_path(prefix))
        except OSError:
            return False
        return stamps == (self.bin, self.idx) and (
            self.dtype, self.sequences, self.documents, self.tokens) == (
            info.dtype.name, info.sequences, info.documents, info.tokens)

    def to_json(self) -> bytes:
        return json.dumps({"format": FACTS_FORMAT, **dataclasses.asdict(self)}, indent=1).encode()

    @classmethod
    def read(cls, path: str) -> DatasetFacts | None:
        """The facts in `path`, or None when it is missing or not a facts file of this format
        (then the dataset is scanned instead: a bad record must never be trusted)."""
        try:
            record = json.loads(Path(path).read_text())
            if record.pop("format") != FACTS_FORMAT:
                return None
            return cls(**record)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None


def facts_path(prefix: str) -> str:
    return prefix + FACTS_SUFFIX


def cached_facts_path(prefix: str, cache_dir: str) -> str:
    """Where the scan of a dataset without trusted facts is kept: one file per dataset path."""
    key = hashlib.sha1(os.path.realpath(prefix).encode(), usedforsecurity=False).hexdigest()
    return os.path.join(cache_dir, "dataset_facts", f"{Path(prefix).name}-{key[:16]}"
                        f"{FACTS_SUFFIX}")


def token_range(bin_path: str, dtype: np.dtype) -> tuple[int, int] | None:
    """(smallest, largest) token id of a .bin, read in chunks (None when it holds no token)."""
    if not os.path.getsize(bin_path):
        return None  # np.memmap refuses an empty file
    tokens = np.memmap(bin_path, dtype=dtype, mode="r")
    chunks = [tokens[start:start + _CHUNK] for start in range(0, len(tokens), _CHUNK)]
    return min(int(c.min()) for c in chunks), max(int(c.max()) for c in chunks)


def inspect_dataset(prefix: str, cache_dir: str | None = None) -> DatasetFacts:
    """Validate ``PREFIX.idx`` (always), then return the dataset's facts: the recorded ones
    beside it or in `cache_dir` when they still describe the files, else a fresh scan of the
    .bin (kept in `cache_dir` when one is given, so that it happens once)."""
    info = validate_index(prefix)
    candidates = [facts_path(prefix)]
    if cache_dir:
        candidates.append(cached_facts_path(prefix, cache_dir))
    for path in candidates:
        facts = DatasetFacts.read(path)
        if facts is not None and facts.describes(prefix, info):
            return facts
    bin_path = get_bin_path(prefix)
    log.warning("%s: no up-to-date %s; reading its %.2f GB once for the token-id range",
                prefix, FACTS_SUFFIX, os.path.getsize(bin_path) / 1e9)
    facts = DatasetFacts.of_files(bin_path, get_idx_path(prefix), info,
                                  token_range(bin_path, info.dtype))
    if cache_dir:
        write_files_atomically({candidates[-1]: facts.to_json()})
    return facts


def check_token_ids(prefix: str, facts: DatasetFacts, vocab_size: int) -> None:
    """Refuse a dataset with a token id the embedding cannot look up (it would fail as "index
    out of range in self" at the first batch that holds it, or be silently wrong)."""
    if facts.max_token_id is not None and facts.max_token_id >= vocab_size:
        raise DataError(f"{prefix}: largest token id {facts.max_token_id} does not fit the "
                        f"vocabulary of {vocab_size} tokens (tokenized with another tokenizer?)")
    if facts.min_token_id is not None and facts.min_token_id < 0:
        raise DataError(f"{prefix}: negative token id {facts.min_token_id}")
