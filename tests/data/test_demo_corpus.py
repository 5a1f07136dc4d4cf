"""tools/make_demo_corpus.py: a deterministic multi-MB English corpus from CPython itself."""

from __future__ import annotations

import itertools
import json

from megatron_ngpt.data.demo_corpus import HELD_OUT_EVERY, iter_documents


def test_demo_corpus_is_deterministic_jsonl_with_a_held_out_part(tmp_path, tool):
    code = tool("make_demo_corpus").main(["--output", str(tmp_path / "train.jsonl"),
                                          "--held-out", str(tmp_path / "held_out.jsonl")])
    assert code == 0
    train = [json.loads(line)["text"] for line in open(tmp_path / "train.jsonl")]
    held_out = [json.loads(line)["text"] for line in open(tmp_path / "held_out.jsonl")]
    assert (tmp_path / "train.jsonl").stat().st_size > 2_000_000
    assert all(text.strip() for text in train + held_out)
    assert "assert" in train[0]  # pydoc topics come first, alphabetically
    # Another pass gives the same documents in the same order, every 50th held out.
    again = list(itertools.islice(iter_documents(), 300))
    assert again[HELD_OUT_EVERY - 1::HELD_OUT_EVERY] == held_out[:300 // HELD_OUT_EVERY]
    del again[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    assert again == train[:len(again)]
    assert len(held_out) == (len(train) + len(held_out)) // HELD_OUT_EVERY
