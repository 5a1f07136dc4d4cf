"""Tokenize a corpus into megatron-core indexed datasets, in parallel, streaming, all-or-nothing.

The main process cuts the input into batches of raw records; worker processes parse and tokenize
whole batches (one batched tokenizer call each) and send back one flat token array per key; the main
process writes results strictly in input order, so the output does not depend on the number of
workers. At most a few batches per worker are in flight, so memory stays bounded whatever the corpus
size. Bad records are skipped and counted (or, with ``strict``, stop the run) and reported as
``file:line: reason``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import signal
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from megatron_ngpt.data.files import DataError
from megatron_ngpt.data.indexed import output_prefix_for, token_dtype, writing_datasets
from megatron_ngpt.data.sources import BadRecord, Batch, expand_inputs, iter_batches, parse_record
from megatron_ngpt.data.tokenizer import Tokenizer, load_tokenizer

MAX_REPORTED = 5  # bad records quoted in the summary; all are counted


class PreprocessError(DataError):
    """A bad record under ``strict``, or an unusable invocation; the message says where."""


@dataclass
class EncodedBatch:
    """A worker's answer: per key, all documents' tokens end to end plus each document's length."""

    tokens: dict[str, np.ndarray]
    lengths: np.ndarray
    num_bytes: int
    skipped: list[tuple[str, BadRecord]]


@dataclass
class PreprocessStats:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = max(self.seconds, 1e-9)
        lines = [f"{self.documents} documents, {self.tokens} tokens, {self.bytes / 1e6:.1f} MB in "
                 f"{self.seconds:.1f}s ({self.documents / rate:.0f} docs/s, "
                 f"{self.tokens / rate:.0f} tokens/s, {self.bytes / 1e6 / rate:.2f} MB/s)"]
        if self.skipped:
            reasons = ", ".join(f"{n} {kind}" for kind, n in self.skipped.most_common())
            lines.append(f"skipped {sum(self.skipped.values())} records: {reasons}")
            lines.extend(f"  {example}" for example in self.examples)
        lines.extend(f"wrote {prefix}.bin/.idx" for prefix in self.outputs)
        return "\n".join(lines)


class _Encoder:
    """Per-process tokenizing state (built once per worker by the pool initializer)."""

    def __init__(self, tokenizer_path: str, keys: tuple[str, ...], append_eod: bool):
        self.args = (tokenizer_path, keys, append_eod)
        self.tokenizer: Tokenizer = load_tokenizer(tokenizer_path)
        self.keys = keys
        self.append_eod = append_eod
        self.dtype = token_dtype(self.tokenizer.vocab_size)

    def __call__(self, batch: Batch) -> EncodedBatch:
        texts: dict[str, list[str]] = {key: [] for key in self.keys}
        skipped, num_bytes = [], 0
        for number, payload in batch.records:
            try:
                parsed = parse_record(batch.mode, payload, self.keys)
            except BadRecord as bad:
                skipped.append((batch.location(number), bad))
                continue
            num_bytes += len(payload) if isinstance(payload, bytes) else \
                sum(len(text) for text in parsed.values())
            for key in self.keys:
                texts[key].append(parsed[key])
        tokens, lengths = {}, []
        for key in self.keys:
            ids = self.tokenizer.encode_batch(texts[key])
            if self.append_eod:
                for doc in ids:
                    doc.append(self.tokenizer.eod_id)
            lengths.append([len(doc) for doc in ids])
            tokens[key] = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype,
                                      count=sum(lengths[-1]))
        return EncodedBatch(tokens, np.array(lengths, dtype=np.int64).reshape(len(self.keys), -1),
                            num_bytes, skipped)


_worker_encoder: _Encoder | None = None


def _init_worker(tokenizer_path: str, keys: tuple[str, ...], append_eod: bool) -> None:
    global _worker_encoder
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and cleans up
    _worker_encoder = _Encoder(tokenizer_path, keys, append_eod)


def _encode_in_worker(batch: Batch) -> EncodedBatch:
    assert _worker_encoder is not None
    return _worker_encoder(batch)


def _ordered_map(encoder: _Encoder, batches: Iterable[Batch], workers: int
                 ) -> Iterator[EncodedBatch]:
    """`map` in input order over a process pool with a bounded number of batches in flight
    (Pool.imap would read the whole input ahead into its task queue). One worker runs in-process."""
    if workers == 1:
        yield from map(encoder, batches)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=encoder.args) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def preprocess(output_prefix: str, tokenizer_path: str, inputs: Iterable[str] = (),
               json_keys: Iterable[str] = ("text",), text_mode: str = "jsonl",
               hf_dataset: str | None = None, hf_split: str = "train", workers: int = 1,
               batch_size: int = 256, append_eod: bool = True, strict: bool = False,
               progress: bool = True) -> PreprocessStats:
    """Tokenize `inputs` (files/globs) and/or `hf_dataset` into ``{output_prefix}_{key}_document``
    for each json key. Raises PreprocessError under `strict` at the first bad record, and
    DataError for an input that ends early or is corrupt, an unusable tokenizer or an output that
    cannot be written; nothing is left behind then."""
    keys = tuple(json_keys)
    if text_mode != "jsonl" and len(keys) != 1:
        raise PreprocessError(f"--text-mode {text_mode} makes one dataset: give one key, "
                              f"not {list(keys)}")
    if workers < 1:
        raise PreprocessError(f"--workers must be at least 1, got {workers}")
    files = expand_inputs(inputs)
    if not files and not hf_dataset:
        raise PreprocessError("no input: give --input files or --hf-dataset")
    encoder = _Encoder(tokenizer_path, keys, append_eod)
    stats = PreprocessStats()
    start = time.perf_counter()
    with ExitStack() as stack:
        writers = dict(zip(keys, stack.enter_context(writing_datasets(
            [output_prefix_for(output_prefix, key) for key in keys], encoder.dtype)),
            strict=True))
        bar = stack.enter_context(tqdm(unit="doc", disable=not progress, mininterval=1.0))
        batches = iter_batches(files, text_mode, batch_size, hf_dataset, hf_split)
        # Closed on the way out, so that an error stops the worker pool at once.
        results = stack.enter_context(closing(_ordered_map(encoder, batches, workers)))
        for result in results:
            for location, bad in result.skipped:
                if strict:
                    raise PreprocessError(f"{location}: {bad}")
                stats.skipped[bad.kind] += 1
                if len(stats.examples) < MAX_REPORTED:
                    stats.examples.append(f"{location}: {bad}")
            for row, key in enumerate(keys):
                offsets = np.cumsum(result.lengths[row])[:-1]
                for doc in np.split(result.tokens[key], offsets):
                    writers[key].add_document(doc)
            stats.documents += result.lengths.shape[1]
            stats.tokens += int(result.lengths.sum())
            stats.bytes += result.num_bytes
            elapsed = time.perf_counter() - start
            bar.update(result.lengths.shape[1])
            bar.set_postfix_str(f"{stats.tokens / elapsed:.0f} tok/s, "
                                f"{stats.bytes / 1e6 / elapsed:.2f} MB/s", refresh=False)
        if stats.documents == 0:
            raise PreprocessError("no documents left to write (every record was skipped)")
    stats.seconds = time.perf_counter() - start
    stats.outputs = [writer.prefix for writer in writers.values()]
    return stats
