"""The tiny models every test trains or builds: `configs/tiny/<arch>.yaml` shrunk further.

`TINY_MODEL` (2 layers so that PP=2 splits it, d 64, 4 heads, ffn 128) is the one shape; the few
other overrides say what a suite adds (a vocabulary, a context, a trainer's batch).
"""

from __future__ import annotations

from megatron_ngpt.config import Config, load_config

TINY_MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
              "model.ffn_hidden_size=128"]
# What a short trainer run adds: a small context and batch, no periodic validation or bar.
TINY_RUN = [*TINY_MODEL, "data.seq_length=32", "training.micro_batch_size=2",
            "training.global_batch_size=8", "training.eval_interval=0",
            "logging.progress_bar=false"]


def tiny_config(arch: str, *overrides: str) -> Config:
    """configs/tiny/<arch>.yaml with `TINY_MODEL` and then `overrides` applied."""
    return load_config(f"configs/tiny/{arch}.yaml", [*TINY_MODEL, *overrides])
