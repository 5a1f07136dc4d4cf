"""One rank of test_two_ranks_build_the_same_datasets (through `run_on_ranks`)."""

import torch

from megatron_ngpt.config import DataConfig
from megatron_ngpt.data.datasets import build_datasets
from megatron_ngpt.data.tokenizer import load_tokenizer


def first_samples(prefix_a: str, prefix_b: str, tokenizer_path: str, cache_dir: str
                  ) -> torch.Tensor:
    """Build a 50/50 blend of two datasets, caching indices in `cache_dir`: its first 8 samples."""
    cfg = DataConfig(data_path=["0.5", prefix_a, "0.5", prefix_b], split="90,10,0")
    train, _, _ = build_datasets(cfg, load_tokenizer(tokenizer_path), 16, (64, 8, 0), seed=7,
                                 cache_dir=cache_dir)
    return torch.stack([train[i]["tokens"] for i in range(8)])
