"""build_datasets: blends, splits and per-split paths through megatron-core's builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_ngpt.config import ConfigError, DataConfig
from megatron_ngpt.data.datasets import build_datasets, parse_blend
from megatron_ngpt.data.indexed import IndexedDatasetWriter
from tests.distributed import run_on_ranks

SEQ = 16
RANGES = {"a": (100, 200), "b": (300, 400)}  # token ids per dataset: a sample shows its source


@pytest.fixture(scope="module")
def two_prefixes(tmp_path_factory, sp_tokenizer) -> dict[str, str]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("blend")
    prefixes = {}
    for name, (low, high) in RANGES.items():
        prefixes[name] = str(folder / name)
        with IndexedDatasetWriter(prefixes[name], np.uint16) as writer:
            for _ in range(200):
                doc = rng.integers(low, high, size=rng.integers(20, 80))
                writer.add_document(np.append(doc, sp_tokenizer.eod_id).astype(np.uint16))
    return prefixes


def source_of(sample: dict) -> str:
    tokens = sample["tokens"].numpy()
    for name, (low, high) in RANGES.items():
        if ((tokens >= low) & (tokens < high) | (tokens == 2)).all():
            return name
    raise AssertionError(f"sample mixes datasets: {tokens}")


def test_blend_weights_give_those_proportions(two_prefixes, sp_tokenizer, tmp_path):
    cfg = DataConfig(data_path=["0.3", two_prefixes["a"], "0.7", two_prefixes["b"]],
                     split="100,0,0")
    train, valid, test = build_datasets(cfg, sp_tokenizer, SEQ, (2000, 0, 0), seed=1,
                                        cache_dir=str(tmp_path))
    assert valid is None and test is None
    assert len(train) >= 2000
    share_a = sum(source_of(train[i]) == "a" for i in range(2000)) / 2000
    assert abs(share_a - 0.3) < 0.01


def test_items_are_shifted_tokens_with_a_loss_mask(two_prefixes, sp_tokenizer, tmp_path):
    cfg = DataConfig(data_path=[two_prefixes["a"]], split="8,2,0")
    train, valid, test = build_datasets(cfg, sp_tokenizer, SEQ, (50, 10, 0), seed=1,
                                        cache_dir=str(tmp_path))
    assert test is None and len(valid) >= 10
    item = train[3]
    assert {"tokens", "labels", "loss_mask", "position_ids"} <= set(item)
    assert item["tokens"].shape == item["labels"].shape == item["loss_mask"].shape == (SEQ,)
    assert torch.equal(item["tokens"][1:], item["labels"][:-1])
    assert item["loss_mask"].sum() == SEQ  # no padding inside training samples
    again = build_datasets(cfg, sp_tokenizer, SEQ, (50, 10, 0), seed=1, cache_dir=str(tmp_path))
    assert torch.equal(again[0][3]["tokens"], item["tokens"])  # from the cached indices



@pytest.mark.parametrize("document_attention", [False, True])
def test_positions_restart_after_every_eod_with_document_attention(
        two_prefixes, sp_tokenizer, tmp_path, document_attention):
    cfg = DataConfig(data_path=[two_prefixes["a"]], split="1,0,0",
                     document_attention=document_attention)
    train, _, _ = build_datasets(cfg, sp_tokenizer, 128, (20, 0, 0), seed=1,
                                 cache_dir=str(tmp_path))
    eods = 0
    for i in range(20):
        tokens, positions = train[i]["tokens"].tolist(), train[i]["position_ids"].tolist()
        expected, position = [], 0
        for token in tokens:
            expected.append(position)
            new_document = document_attention and token == sp_tokenizer.eod_id
            position = 0 if new_document else position + 1
        assert positions == expected, i
        eods += tokens[:-1].count(sp_tokenizer.eod_id)
    assert eods > 20  # documents of 20-80 tokens: several boundaries in every sample

def test_separate_paths_per_split(two_prefixes, sp_tokenizer, tmp_path):
    cfg = DataConfig(train_data_path=[two_prefixes["a"]], valid_data_path=[two_prefixes["b"]])
    train, valid, test = build_datasets(cfg, sp_tokenizer, SEQ, (40, 20, 0), seed=1,
                                        cache_dir=str(tmp_path))
    assert test is None
    assert {source_of(train[i]) for i in range(40)} == {"a"}
    assert {source_of(valid[i]) for i in range(20)} == {"b"}


def test_blend_parsing_and_errors(two_prefixes, sp_tokenizer, tmp_path):
    assert parse_blend(["p"]) == (["p"], None)
    assert parse_blend(["p", "q"]) == (["p", "q"], None)
    assert parse_blend(["1", "p", "3", "q"]) == (["p", "q"], [1.0, 3.0])
    with pytest.raises(ConfigError, match="pairs"):
        parse_blend(["1", "p", "3"])
    with pytest.raises(ConfigError, match="not found"):
        build_datasets(DataConfig(data_path=[str(tmp_path / "nope")]), sp_tokenizer, SEQ,
                       (10, 1, 1), seed=1, cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="no dataset"):
        build_datasets(DataConfig(), sp_tokenizer, SEQ, (10, 1, 1), seed=1, cache_dir=None)


@pytest.mark.slow
def test_two_ranks_build_the_same_datasets(two_prefixes, sp_tokenizer_path, tmp_path):
    rank0, rank1 = run_on_ranks(2, "tests.data.build_worker:first_samples", two_prefixes["a"],
                                two_prefixes["b"], str(sp_tokenizer_path), str(tmp_path / "cache"))
    assert torch.equal(rank0, rank1) and rank0.shape == (8, SEQ)
    assert len(list(tmp_path.glob("cache/*.npy"))) > 0
