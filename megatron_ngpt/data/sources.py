"""Where documents come from: jsonl (plain, .gz, .zst), plain text files, Hugging Face datasets.

Reading is streamed and split in two so that the expensive half runs in worker processes: the main
process only cuts the input into raw records (a jsonl line's bytes, a text file's or block's bytes,
a dataset row) grouped into :class:`Batch` es of one source; :func:`parse_record` (run in the
workers) decodes a record into ``{key: text}`` or raises :class:`BadRecord` with a short reason.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from megatron_ngpt.data.files import DataError, os_reason

TEXT_MODES = ("jsonl", "file", "blocks")


class BadRecord(ValueError):
    """A record that cannot become a document; ``kind`` groups reasons for the summary."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class Batch:
    """Consecutive records of one source: ``records`` are (line or row number, payload)."""

    source: str
    mode: str  # "jsonl", "file", "blocks" or "hf"
    records: list[tuple[int, Any]]

    def location(self, number: int) -> str:
        return f"{self.source}:{number}"


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Files named directly or by glob, in the given order (each glob sorted); a name that matches
    nothing is an error rather than a silently smaller dataset."""
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{pattern}: no files match")
            files.extend(matches)
        elif Path(pattern).is_file():
            files.append(pattern)
        else:
            raise FileNotFoundError(f"{pattern}: no such file")
    return files


_ZSTD_READ_SIZE = 1 << 17  # compressed bytes per read (zstd's recommended input size)


class CorruptInput(ValueError):
    """zstd data that does not decode: zstandard's error as a type read_lines can catch
    without importing zstandard."""


class _ZstdReader(io.RawIOBase):
    """Every frame of a .zst file, decompressed, one frame at a time. zstandard's own
    ``stream_reader`` treats a file that ends inside a frame as a clean end, so a truncated
    download would silently lose the rest of the file; here it raises ``EOFError``."""

    def __init__(self, path: str):
        try:
            import zstandard
        except ImportError as err:
            raise ImportError(f"{path}: reading .zst needs `pip install zstandard`") from err
        self._source = open(path, "rb")
        self._decompressor = zstandard.ZstdDecompressor()
        self._zstd_error = zstandard.ZstdError
        self._frame: Any = None  # the frame being decompressed (a zstandard decompressobj)
        self._output = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._output:
            compressed = self._source.read(_ZSTD_READ_SIZE)
            if not compressed:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            self._output = memoryview(self._decompress(compressed))
        size = min(len(buffer), len(self._output))
        buffer[:size] = self._output[:size]
        self._output = self._output[size:]
        return size

    def _decompress(self, compressed: bytes) -> bytes:
        parts = []
        while compressed:  # a chunk can end one frame and start the next
            if self._frame is None or self._frame.eof:
                self._frame = self._decompressor.decompressobj()
            try:
                parts.append(self._frame.decompress(compressed))
            except self._zstd_error as err:
                raise CorruptInput(str(err)) from None
            compressed = self._frame.unused_data if self._frame.eof else b""
        return b"".join(parts)

    def close(self) -> None:
        self._source.close()
        super().close()


def open_binary(path: str) -> IO[bytes]:
    """Open for reading bytes, decompressing .gz and .zst/.zstd on the fly. Read through
    :func:`read_lines`, which turns a truncated or corrupt file into one clear error."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 16)
    return open(path, "rb")


def _read_error(path: str, err: Exception, lines: int) -> DataError:
    where = f" after line {lines}" if lines else ""
    if isinstance(err, EOFError):
        return DataError(f"{path}: compressed data ends early{where} (truncated file?): {err}")
    if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile):
        return DataError(f"{path}: cannot read{where}: {os_reason(err)}")
    return DataError(f"{path}: corrupt compressed data{where}: {err}")


def read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a file, decompressed. A compressed file that ends early or does not
    decode (gzip CRC, zstd checksum) raises DataError naming it and the last good line: a
    silently shorter corpus is worse than a failed run. (A plain file's last line without a
    newline is simply its last line.)"""
    number = 0
    try:
        with open_binary(path) as stream:
            for number, line in enumerate(stream, start=1):
                yield number, line
    except (EOFError, OSError, zlib.error, CorruptInput) as err:
        raise _read_error(path, err, number) from None


def _file_records(path: str, mode: str) -> Iterator[tuple[int, bytes]]:
    lines = read_lines(path)
    if mode == "file":
        yield 1, b"".join(line for _, line in lines)
        return
    block: list[bytes] = []
    start = 0
    for number, line in lines:
        if mode == "jsonl":
            if line.strip():  # blank lines are not documents, not even bad ones
                yield number, line
            continue
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield start, b"".join(block)
            block = []
    if block:
        yield start, b"".join(block)


def _hf_rows(name: str, split: str) -> Iterator[tuple[int, dict]]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError("--hf-dataset needs `pip install datasets`") from err
    if (Path(name) / "dataset_info.json").is_file() or (Path(name) / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(name)  # memory-mapped Arrow: iterating streams it
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(name, split=split, streaming=True)
    yield from enumerate(dataset)


def iter_batches(files: list[str], mode: str, batch_size: int, hf_dataset: str | None = None,
                 hf_split: str = "train") -> Iterator[Batch]:
    """Batches of at most `batch_size` records, in input order, never spanning two sources."""
    if mode not in TEXT_MODES:
        raise ValueError(f"text mode {mode!r} is not one of {', '.join(TEXT_MODES)}")
    sources: list[tuple[str, str, Iterator[tuple[int, Any]]]] = [
        (path, mode, _file_records(path, mode)) for path in files]
    if hf_dataset:
        sources.append((f"{hf_dataset}[{hf_split}]", "hf", _hf_rows(hf_dataset, hf_split)))
    for source, source_mode, records in sources:
        batch = Batch(source, source_mode, [])
        for record in records:
            batch.records.append(record)
            if len(batch.records) == batch_size:
                yield batch
                batch = Batch(source, source_mode, [])
        if batch.records:
            yield batch


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord("invalid UTF-8", f"byte {err.start}") from None


def parse_record(mode: str, payload: Any, keys: tuple[str, ...]) -> dict[str, str]:
    """``{key: text}`` for every key, or BadRecord: a record is kept whole or skipped whole, so
    the outputs of several keys stay aligned document by document."""
    if mode in ("file", "blocks"):
        row: Any = {keys[0]: _decode(payload)}
    elif mode == "jsonl":
        try:
            row = json.loads(_decode(payload))
        except json.JSONDecodeError as err:
            raise BadRecord("malformed JSON", err.msg) from None
    else:
        row = payload
    if not isinstance(row, dict):
        raise BadRecord("not a JSON object")
    texts = {}
    for key in keys:
        if key not in row:
            raise BadRecord("missing key", repr(key))
        text = row[key]
        if not isinstance(text, str):
            raise BadRecord("not a string", f"key {key!r} holds {type(text).__name__}")
        if not text.strip():
            raise BadRecord("empty document", f"key {key!r}")
        texts[key] = text
    return texts
