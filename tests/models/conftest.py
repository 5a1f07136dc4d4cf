"""Shared fixtures for model tests: a one-rank gloo world and tiny model configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_ngpt.config import ModelConfig, load_config
from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
        "model.ffn_hidden_size=128", "model.vocab_size=256"]


def tiny_model_config(arch: str, *overrides: str) -> ModelConfig:
    """configs/tiny/<arch>.yaml shrunk to heads=4, d=64, ffn=128, vocab=256."""
    return load_config(CONFIGS / "tiny" / f"{arch}.yaml", [*TINY, *overrides]).model


@pytest.fixture(scope="session")
def single_rank():
    """megatron-core's process groups on a one-rank gloo world (TP=PP=1)."""
    dims = init_distributed(1, 1, "cpu")
    yield dims
    shutdown_distributed()
