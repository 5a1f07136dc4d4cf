"""One rank of test_two_ranks_build_the_same_datasets: build, then save the first samples."""

import sys

import torch
import torch.distributed as dist

from megatron_ngpt.config import DataConfig
from megatron_ngpt.data.datasets import build_datasets
from megatron_ngpt.data.tokenizer import load_tokenizer

if __name__ == "__main__":
    prefix_a, prefix_b, tokenizer_path, out = sys.argv[1:]
    dist.init_process_group("gloo")
    cfg = DataConfig(data_path=["0.5", prefix_a, "0.5", prefix_b], split="90,10,0")
    train, valid, _ = build_datasets(cfg, load_tokenizer(tokenizer_path), 16, (64, 8, 0),
                                     seed=7, cache_dir=f"{out}/cache")
    torch.save(torch.stack([train[i]["tokens"] for i in range(8)]),
               f"{out}/rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
