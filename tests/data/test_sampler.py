"""MicroBatchLoader: the global-batch layout over data-parallel ranks and exact resumption."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import Dataset

from megatron_ngpt.config import DataConfig
from megatron_ngpt.data.datasets import build_datasets
from megatron_ngpt.data.sampler import DataExhaustedError, MicroBatchLoader


class Numbered(Dataset):
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(index), "tokens": torch.full((3,), index)}


def indices(loader: MicroBatchLoader, micro_batches: int) -> list[list[int]]:
    return [batch["index"].tolist() for batch in itertools.islice(loader, micro_batches)]


def test_each_rank_gets_contiguous_micro_batches_of_every_global_batch():
    dataset = Numbered(1000)
    ranks = [MicroBatchLoader(dataset, 2, 8, dp_rank=r, dp_size=2) for r in range(2)]
    seen = [indices(loader, 4) for loader in ranks]  # 2 micro-batches per step per rank
    assert seen[0] == [[0, 1], [2, 3], [8, 9], [10, 11]]
    assert seen[1] == [[4, 5], [6, 7], [12, 13], [14, 15]]
    assert ranks[0].consumed_samples == ranks[1].consumed_samples == 16
    batch = next(iter(MicroBatchLoader(dataset, 2, 8, 0, 2)))
    assert batch["tokens"].shape == (2, 3)


def test_consumed_samples_counts_whole_global_batches():
    loader = MicroBatchLoader(Numbered(100), 2, 8, dp_rank=0, dp_size=1, consumed_samples=24)
    assert loader.consumed_samples == 24
    indices(loader, 3)  # three of the four micro-batches of the step
    assert loader.consumed_samples == 24
    indices(loader, 1)
    assert loader.state_dict() == {"consumed_samples": 32}


@pytest.mark.parametrize("dp_size", [1, 2])
def test_resumed_loader_yields_what_an_uninterrupted_one_yields(dp_size):
    dataset, steps, k_steps = Numbered(500), 10, 4
    per_step = 12 // (3 * dp_size)
    for rank in range(dp_size):
        straight = MicroBatchLoader(dataset, 3, 12, rank, dp_size)
        expected = indices(straight, steps * per_step)
        first = MicroBatchLoader(dataset, 3, 12, rank, dp_size)
        assert indices(first, k_steps * per_step) == expected[:k_steps * per_step]
        resumed = MicroBatchLoader(dataset, 3, 12, rank, dp_size)
        resumed.load_state_dict(first.state_dict())
        assert resumed.consumed_samples == 12 * k_steps
        assert indices(resumed, (steps - k_steps) * per_step) == expected[k_steps * per_step:]


def test_resuming_with_another_data_parallel_size_keeps_the_global_order():
    dataset = Numbered(500)
    one = MicroBatchLoader(dataset, 2, 8, 0, 1, consumed_samples=16)
    global_order = sum(indices(one, 8), [])
    two = [MicroBatchLoader(dataset, 2, 8, r, 2, consumed_samples=16) for r in range(2)]
    per_rank = [indices(loader, 4) for loader in two]
    interleaved = [per_rank[r][2 * step + j] for step in range(2) for r in range(2)
                   for j in range(2)]
    assert sum(interleaved, []) == global_order == list(range(16, 32))


def test_wraps_around_or_raises_when_the_dataset_runs_out():
    wrapping = MicroBatchLoader(Numbered(10), 2, 4, 0, 1)
    assert indices(wrapping, 6) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [0, 1]]
    strict = MicroBatchLoader(Numbered(10), 2, 4, 0, 1, wrap=False)
    assert len(indices(strict, 5)) == 5
    with pytest.raises(DataExhaustedError, match="10 samples"):
        next(strict)


def test_batch_sizes_must_divide(tmp_path):
    with pytest.raises(ValueError, match="not divisible"):
        MicroBatchLoader(Numbered(10), 3, 8, 0, 2)


def test_loader_over_gpt_dataset_with_a_worker_resumes_exactly(sp_tokenizer, tiny_dataset_prefix,
                                                               tmp_path):
    train, _, _ = build_datasets(DataConfig(data_path=[tiny_dataset_prefix], split="1,0,0"),
                                 sp_tokenizer, 32, (64, 0, 0), seed=3, cache_dir=str(tmp_path))
    straight = [b["tokens"] for b in itertools.islice(MicroBatchLoader(train, 2, 8, 1, 2), 6)]
    resumed = MicroBatchLoader(train, 2, 8, 1, 2, consumed_samples=16, num_workers=1)
    assert straight[0].shape == (2, 32)
    assert all(torch.equal(a, b["tokens"]) for a, b in zip(straight[4:], resumed, strict=False))
