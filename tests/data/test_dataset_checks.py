"""Datasets are checked before training reads them: a damaged index is refused naming the file,
token ids must fit the vocabulary, and a dataset regenerated under the same prefix never reuses
the index caches of the old one."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_ngpt.config import ConfigError, DataConfig
from megatron_ngpt.data.datasets import build_datasets
from megatron_ngpt.data.indexed import IndexedDatasetWriter, merge_datasets

SEQ = 16
DOCUMENTS = 50
HEADER = 34  # the .idx layout, from megatron-core's _IndexWriter: magic 9, version 8, dtype 1,
# sequence count 8, boundary count 8; then int32 lengths, int64 pointers, int64 boundaries


def write_dataset(prefix: Path, seed: int, high: int = 900, writer=IndexedDatasetWriter) -> str:
    """DOCUMENTS random documents of ids in [3, high), each ending with eod (2), uint16."""
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(3, high, size=rng.integers(10, 60)), 2).astype(np.uint16)
            for _ in range(DOCUMENTS)]
    if writer is IndexedDatasetBuilder:  # another tool: megatron-core's builder, no facts file
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
        for doc in docs:
            builder.add_document(doc, [doc.size])
        builder.finalize(f"{prefix}.idx")
    else:
        with writer(str(prefix), np.uint16) as dataset:
            for doc in docs:
                dataset.add_document(doc)
    return str(prefix)


def patch(path: str, offset: int, fmt: str, value) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        stream.write(struct.pack(fmt, value))


def add_to(path: str, offset: int, fmt: str, delta: int) -> None:
    patch(path, offset, fmt, struct.unpack_from(fmt, Path(path).read_bytes(), offset)[0] + delta)


def lengths_offset(k: int) -> int:
    return HEADER + 4 * k


def pointers_offset(k: int) -> int:
    return HEADER + 4 * DOCUMENTS + 8 * k


def boundaries_offset(k: int) -> int:
    return HEADER + 12 * DOCUMENTS + 8 * k


DAMAGE = {  # name -> (damage to PREFIX.idx/.bin, reason reported)
    "negative-length": (lambda p: patch(p + ".idx", lengths_offset(7), "<i", -5),
                        "sequence 7 has a negative length (-5)"),
    "pointer-past-the-end": (lambda p: patch(p + ".idx", pointers_offset(9), "<q", 10**9),
                             "sequence 9 starts at byte 1000000000, outside"),
    "pointer-off-by-one-token": (lambda p: add_to(p + ".idx", pointers_offset(3), "<q", 2),
                                 "sequence 3 starts at byte"),
    "float-dtype-code": (lambda p: patch(p + ".idx", 17, "<B", 6),
                         "token dtype code 6 is not an integer type"),
    "unknown-dtype-code": (lambda p: patch(p + ".idx", 17, "<B", 99),
                           "token dtype code 99 is not an integer type"),
    "wrong-magic": (lambda p: patch(p + ".idx", 0, "<B", ord("X")),
                    "not a megatron-core index"),
    "wrong-version": (lambda p: patch(p + ".idx", 9, "<Q", 3), "index version 3, expected 1"),
    "truncated-idx": (lambda p: os.truncate(p + ".idx", os.path.getsize(p + ".idx") - 40),
                      "truncated or corrupt"),
    "header-only": (lambda p: os.truncate(p + ".idx", 20), "shorter than an index header"),
    "boundaries-decrease": (lambda p: patch(p + ".idx", boundaries_offset(10), "<q", 40),
                            "document boundary 11 (11) is smaller than the one before it (40)"),
    "last-boundary-wrong": (lambda p: patch(p + ".idx", boundaries_offset(DOCUMENTS), "<q",
                                            DOCUMENTS - 1),
                            f"the last document boundary is {DOCUMENTS - 1}, but there are "
                            f"{DOCUMENTS} sequences"),
    "truncated-bin": (lambda p: os.truncate(p + ".bin", os.path.getsize(p + ".bin") - 10),
                      "bytes of tokens: the two are not one pair"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_dataset_is_refused_naming_the_file(tmp_path, sp_tokenizer, tool, capsys,
                                                    damage):
    make_damage, reason = DAMAGE[damage]
    prefix = write_dataset(tmp_path / "d", seed=0)
    make_damage(prefix)
    damaged_file = prefix + (".bin" if damage == "truncated-bin" else ".idx")
    cfg = DataConfig(data_path=[prefix], split="1,0,0")
    with pytest.raises(ConfigError) as refused:
        build_datasets(cfg, sp_tokenizer, SEQ, (20, 0, 0), seed=1, cache_dir=str(tmp_path / "c"))
    assert str(refused.value).startswith(f"data.data_path: {damaged_file}: ")
    assert reason in str(refused.value)
    assert tool("merge_datasets").main(["--input", prefix, "--output-prefix",
                                        str(tmp_path / "merged")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {damaged_file}: ")
    assert not list(tmp_path.glob("merged*"))


@pytest.mark.parametrize("facts", ["recorded", "none", "stale"])
def test_token_ids_beyond_the_vocabulary_are_refused_before_training(tmp_path, sp_tokenizer,
                                                                    facts):
    """1500 is outside the 1000-token vocabulary (the embedding would fail with "index out of
    range in self" at the first batch holding it), whether the dataset's facts were recorded
    by our writer, are missing (another tool made it) or are left from an earlier version."""
    prefix = str(tmp_path / "d")
    if facts == "stale":
        write_dataset(tmp_path / "d", seed=0)  # fits the vocabulary: its facts say so
        shutil.copy(prefix + ".meta.json", tmp_path / "old.meta.json")
    write_dataset(tmp_path / "d", seed=0, high=1501,
                  writer=IndexedDatasetWriter if facts == "recorded" else IndexedDatasetBuilder)
    if facts == "stale":
        shutil.copy(tmp_path / "old.meta.json", prefix + ".meta.json")
    largest = max(int(doc.max()) for doc in _documents(prefix))
    assert largest >= sp_tokenizer.vocab_size == 1000
    cfg = DataConfig(train_data_path=[prefix])
    with pytest.raises(ConfigError) as refused:
        build_datasets(cfg, sp_tokenizer, SEQ, (20, 0, 0), seed=1, cache_dir=str(tmp_path / "c"))
    assert str(refused.value) == (
        f"data.train_data_path: {prefix}: largest token id {largest} does not fit the vocabulary "
        "of 1000 tokens (tokenized with another tokenizer?)")


def _documents(prefix: str) -> list[np.ndarray]:
    """The documents read straight from the files, by the format (not through our code)."""
    idx = Path(prefix + ".idx").read_bytes()
    count = struct.unpack_from("<Q", idx, 18)[0]
    lengths = np.frombuffer(idx, np.int32, count, HEADER)
    tokens = np.fromfile(prefix + ".bin", dtype=np.uint16)
    return np.split(tokens, np.cumsum(lengths)[:-1])


def test_recorded_facts_are_trusted_only_while_they_describe_the_files(tmp_path, monkeypatch):
    from megatron_ngpt.data import integrity

    parts = [write_dataset(tmp_path / "a", seed=0, high=500), write_dataset(tmp_path / "b", 1)]
    prefix = str(tmp_path / "d")
    merge_datasets(parts, prefix)
    scans = []
    real_scan = integrity.token_range
    monkeypatch.setattr(integrity, "token_range", lambda *a: scans.append(a) or real_scan(*a))
    facts = integrity.inspect_dataset(prefix, str(tmp_path / "cache"))
    tokens = np.concatenate(_documents(prefix))
    assert scans == []  # the merge recorded facts that describe the files: no read of the .bin
    assert (facts.min_token_id, facts.max_token_id) == (tokens.min(), tokens.max())
    assert (facts.documents, facts.tokens) == (2 * DOCUMENTS, tokens.size)
    os.utime(prefix + ".bin", ns=(1, 1))  # same bytes, another modification time
    assert integrity.inspect_dataset(prefix, str(tmp_path / "cache")).max_token_id == \
        tokens.max()
    assert len(scans) == 1
    integrity.inspect_dataset(prefix, str(tmp_path / "cache"))
    assert len(scans) == 1  # the scan was kept in the cache


@pytest.mark.parametrize("writer", [IndexedDatasetWriter, IndexedDatasetBuilder],
                         ids=["our-writer", "another-tool"])
def test_regenerated_dataset_gets_fresh_index_caches(tmp_path, sp_tokenizer, writer):
    """The samples built after regenerating a dataset under the same prefix with the same cache
    folder are those a fresh cache gives, not those of the stale cached indices."""
    cfg = DataConfig(data_path=["0.5", str(tmp_path / "a"), "0.5", str(tmp_path / "b")],
                     split="1,0,0")
    cache = str(tmp_path / "cache")

    def samples(cache_dir: str) -> torch.Tensor:
        train, _, _ = build_datasets(cfg, sp_tokenizer, SEQ, (40, 0, 0), seed=1,
                                     cache_dir=cache_dir)
        return torch.stack([train[i]["tokens"] for i in range(40)])

    write_dataset(tmp_path / "a", seed=0)
    write_dataset(tmp_path / "b", seed=1)
    old = samples(cache)
    old_cache = set(os.listdir(cache))
    write_dataset(tmp_path / "a", seed=2, writer=writer)  # same prefix, same document count
    regenerated = samples(cache)
    assert torch.equal(regenerated, samples(str(tmp_path / "fresh")))
    assert not torch.equal(regenerated, old)
    assert not set(os.listdir(cache)) <= old_cache  # new cache files, under new keys
