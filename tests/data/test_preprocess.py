"""tools/preprocess_data.py and tools/merge_datasets.py: formats, determinism, round trips."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ngpt.data.indexed import merge_datasets
from megatron_ngpt.data.preprocess import preprocess


def documents(prefix: str) -> list[np.ndarray]:
    dataset = IndexedDataset(prefix)
    assert len(dataset.document_indices) - 1 == len(dataset)  # one sequence per document
    return [np.array(dataset[i]) for i in range(len(dataset))]  # copies outlive the mmap


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_round_trip_through_indexed_dataset(tiny_corpus, sp_tokenizer, tiny_dataset_prefix):
    texts = [json.loads(line)["text"] for line in tiny_corpus.read_text().splitlines()]
    docs = documents(tiny_dataset_prefix)
    assert len(docs) == len(texts)
    assert docs[0].dtype == np.uint16
    for text, doc in zip(texts, docs, strict=True):
        assert doc[-1] == sp_tokenizer.eod_id
        assert sp_tokenizer.eod_id not in doc[:-1]
        assert sp_tokenizer.decode(doc[:-1].tolist()) == sp_tokenizer.decode(
            sp_tokenizer.encode(text))
        assert doc[:-1].tolist() == sp_tokenizer.encode(text)


def test_one_and_two_workers_write_identical_files(tmp_path, tiny_corpus, sp_tokenizer_path):
    for workers in (1, 2):
        preprocess(str(tmp_path / f"w{workers}"), str(sp_tokenizer_path), [str(tiny_corpus)],
                   workers=workers, batch_size=7, progress=False)
    for suffix in (".bin", ".idx"):
        one = (tmp_path / f"w1_text_document{suffix}").read_bytes()
        assert one == (tmp_path / f"w2_text_document{suffix}").read_bytes()


def test_compressed_inputs_and_globs_give_the_same_dataset(tmp_path, tiny_corpus,
                                                           sp_tokenizer_path,
                                                           tiny_dataset_prefix):
    zstandard = pytest.importorskip("zstandard")
    lines = tiny_corpus.read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    (tmp_path / "in").mkdir()
    with gzip.open(tmp_path / "in" / "a.jsonl.gz", "wb") as stream:
        stream.writelines(lines[:half])
    (tmp_path / "in" / "b.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(b"".join(lines[half:])))
    out = preprocess(str(tmp_path / "glob"), str(sp_tokenizer_path),
                     [str(tmp_path / "in" / "*.jsonl.*")], progress=False).outputs[0]
    assert Path(out + ".bin").read_bytes() == Path(tiny_dataset_prefix + ".bin").read_bytes()
    assert Path(out + ".idx").read_bytes() == Path(tiny_dataset_prefix + ".idx").read_bytes()


def test_text_modes_file_and_blocks(tmp_path, sp_tokenizer, sp_tokenizer_path):
    (tmp_path / "one.txt").write_text("First document.\n\nStill the first.\n")
    (tmp_path / "two.txt").write_text("Second document.\n")
    files = [str(tmp_path / "one.txt"), str(tmp_path / "two.txt")]
    by_file = preprocess(str(tmp_path / "f"), str(sp_tokenizer_path), files, text_mode="file",
                         progress=False).outputs[0]
    assert [sp_tokenizer.decode(d[:-1].tolist()) for d in documents(by_file)] == [
        "First document.\n\nStill the first.\n", "Second document.\n"]
    by_block = preprocess(str(tmp_path / "b"), str(sp_tokenizer_path), files,
                          text_mode="blocks", progress=False).outputs[0]
    assert [sp_tokenizer.decode(d[:-1].tolist()) for d in documents(by_block)] == [
        "First document.\n", "Still the first.\n", "Second document.\n"]


def test_several_json_keys_and_no_eod(tmp_path, sp_tokenizer, sp_tokenizer_path):
    rows = [{"title": f"Title {i}", "body": f"Body number {i}."} for i in range(5)]
    stats = preprocess(str(tmp_path / "kv"), str(sp_tokenizer_path),
                       [str(write_jsonl(tmp_path / "kv.jsonl", rows))],
                       json_keys=["title", "body"], append_eod=False, progress=False)
    assert stats.outputs == [str(tmp_path / f"kv_{key}_document") for key in ("title", "body")]
    titles, bodies = (documents(prefix) for prefix in stats.outputs)
    assert [sp_tokenizer.decode(d.tolist()) for d in titles] == [r["title"] for r in rows]
    assert [d.tolist() for d in bodies] == sp_tokenizer.encode_batch([r["body"] for r in rows])


def test_hugging_face_dataset_from_disk(tmp_path, sp_tokenizer, sp_tokenizer_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"Row {i} of a saved dataset." for i in range(10)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    out = preprocess(str(tmp_path / "hf"), str(sp_tokenizer_path), [],
                     hf_dataset=str(tmp_path / "saved"), progress=False).outputs[0]
    assert [sp_tokenizer.decode(d[:-1].tolist()) for d in documents(out)] == texts


def test_hugging_face_dataset_from_local_json_files(tmp_path, sp_tokenizer, sp_tokenizer_path):
    pytest.importorskip("datasets")
    (tmp_path / "jsons").mkdir()
    write_jsonl(tmp_path / "jsons" / "part.jsonl", [{"text": f"Line {i}."} for i in range(4)])
    out = preprocess(str(tmp_path / "hfj"), str(sp_tokenizer_path), [],
                     hf_dataset=str(tmp_path / "jsons"), progress=False).outputs[0]
    assert [sp_tokenizer.decode(d[:-1].tolist()) for d in documents(out)] == [
        f"Line {i}." for i in range(4)]


def test_merge_keeps_document_boundaries(tmp_path, sp_tokenizer_path, tiny_dataset_prefix,
                                         tool):
    small = preprocess(str(tmp_path / "small"), str(sp_tokenizer_path),
                       [str(write_jsonl(tmp_path / "s.jsonl", [{"text": "a b"}, {"text": "c"}]))],
                       progress=False).outputs[0]
    assert tool("merge_datasets").main(["--input", tiny_dataset_prefix, small,
                                        "--output-prefix", str(tmp_path / "m")]) == 0
    merged, first, second = documents(str(tmp_path / "m")), documents(tiny_dataset_prefix), \
        documents(small)
    assert len(merged) == len(first) + len(second)
    assert all(np.array_equal(a, b) for a, b in zip(merged, first + second, strict=True))
    assert merge_datasets([small, small], str(tmp_path / "m2")) == 4


def test_merge_rejects_a_missing_prefix(tmp_path, tiny_dataset_prefix):
    with pytest.raises(FileNotFoundError, match="nope"):
        merge_datasets([tiny_dataset_prefix, str(tmp_path / "nope")], str(tmp_path / "m"))
    assert not list(tmp_path.iterdir())
