"""Train/valid/test datasets from indexed-dataset prefixes through megatron-core's builders.

``data.data_path`` is a blend (``["0.3", "prefix_a", "0.7", "prefix_b"]``, or prefixes without
weights to weigh them by size, or a single prefix) cut into splits by ``data.split``; or
``train_data_path``/``valid_data_path``/``test_data_path`` give each split its own blend. Samples
are megatron-core GPTDataset items: ``tokens``, ``labels`` (tokens shifted by one),
``loss_mask`` and ``position_ids`` of ``seq_length`` each (with ``data.document_attention``,
positions restart at 0 after every EOD token). Index caches go to `cache_dir`; with
torch.distributed initialized, rank 0 builds them first and the other ranks then load them.

Before anything is built every dataset is checked (integrity.py): its index is validated, its
token ids must fit the tokenizer's vocabulary, and the SHA-1 of its ``.idx`` becomes part of
every index-cache key, so a dataset regenerated under the same prefix never reuses the document,
sample and shuffle indices cached for the old one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ngpt.config import ConfigError, DataConfig
from megatron_ngpt.data.files import DataError
from megatron_ngpt.data.integrity import DatasetFacts, check_token_ids, inspect_dataset
from megatron_ngpt.data.tokenizer import Tokenizer
from megatron_ngpt.log import get_logger

Blend = tuple[list[str], list[float] | None]
log = get_logger()


class MegatronTokenizerAdapter:
    """The attributes megatron-core's GPTDataset reads from a tokenizer.

    ``pad`` is megatron-core's own "never a real token" id (-1): our ``pad_id`` is eos, and a pad
    equal to the eod token would mask every document end out of the loss.
    """

    pad = -1

    def __init__(self, tokenizer: Tokenizer):
        self.vocab_size = tokenizer.vocab_size
        self.eod = tokenizer.eod_id
        self.eos = tokenizer.eos_id
        self.bos = tokenizer.bos_id
        # Part of the dataset cache key: a different tokenizer must not reuse cached indices.
        self.unique_identifiers = {"class": type(tokenizer).__name__,
                                   "tokenizer_path": Path(tokenizer.path).name,
                                   "vocab_size": tokenizer.vocab_size, "eod": tokenizer.eod_id}


def parse_blend(entries: list[str], key: str = "data.data_path") -> Blend | None:
    """``[w1, p1, w2, p2, ...]`` -> ([p1, p2], [w1, w2]); ``[p1, p2, ...]`` -> (prefixes, None)."""
    if not entries:
        return None
    try:
        float(entries[0])
    except ValueError:
        return list(entries), None
    if len(entries) % 2:
        raise ConfigError(f"{key}: a weighted blend is pairs of 'weight prefix', got {entries}")
    try:
        weights = [float(w) for w in entries[0::2]]
    except ValueError as err:
        raise ConfigError(f"{key}: {err} in weighted blend {entries}") from None
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"{key}: blend weights must be non-negative and not all 0: {weights}")
    return list(entries[1::2]), weights


@dataclass
class FileKeyedGPTDatasetConfig(GPTDatasetConfig):
    data_files: dict[str, str] = field(default_factory=dict)
    """Prefix -> SHA-1 of its .idx: part of every index-cache key (see FileKeyedGPTDataset)."""


class FileKeyedGPTDataset(GPTDataset):
    """megatron-core's GPTDataset with the data files' identity in its cache key. Its own key
    names the prefix but not what the files hold, so indices cached for a dataset regenerated
    under the same prefix would be reused: crashes or silently wrong samples. The key holds the
    identity of every dataset of the config (changing one rebuilds the indices of all: they are
    cheap) and reaches the BlendedDataset caches too, whose key includes their datasets'."""

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return [*GPTDataset._key_config_attributes(), "data_files"]


def _inspect_blend(blend: Blend | None, key: str, vocab_size: int, cache_dir: str | None
                  ) -> dict[str, DatasetFacts]:
    """Facts of every prefix of a blend once its index is validated and its token ids are
    known to fit `vocab_size`; any failure is a ConfigError naming `key` and the file."""
    facts = {}
    for prefix in blend[0] if blend else []:
        if not IndexedDataset.exists(prefix):
            raise ConfigError(f"{key}: {prefix}.bin/.idx not found (make it with "
                              "tools/preprocess_data.py)")
        try:
            facts[prefix] = inspect_dataset(prefix, cache_dir)
            check_token_ids(prefix, facts[prefix], vocab_size)
        except DataError as err:
            raise ConfigError(f"{key}: {err}") from None
    return facts


def gpt_dataset_config(data_cfg: DataConfig, tokenizer: Tokenizer, seq_length: int, seed: int,
                       cache_dir: str | None) -> GPTDatasetConfig:
    """The megatron-core config of `data_cfg`'s datasets, each checked by :func:`_inspect_blend`
    against the tokenizer's vocabulary (which the model's padded vocabulary contains)."""
    per_split = {key: parse_blend(getattr(data_cfg, key), f"data.{key}")
                 for key in ("train_data_path", "valid_data_path", "test_data_path")}
    blend = parse_blend(data_cfg.data_path)
    facts: dict[str, DatasetFacts] = {}
    if any(per_split.values()):
        for key, split_blend in per_split.items():
            facts |= _inspect_blend(split_blend, f"data.{key}", tokenizer.vocab_size, cache_dir)
        blends: dict[str, Any] = {"blend_per_split": list(per_split.values())}
    elif blend:
        facts = _inspect_blend(blend, "data.data_path", tokenizer.vocab_size, cache_dir)
        blends = {"blend": blend, "split": data_cfg.split.replace("/", ",")}
    else:
        raise ConfigError("data.data_path: no dataset given (or set data.train_data_path)")
    config = FileKeyedGPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, path_to_cache=cache_dir or None,
        tokenizer=MegatronTokenizerAdapter(tokenizer),
        # Document attention: positions restart at 0 after every EOD, and the model reads the
        # document starts from them (models/documents.py), so no mask is built here.
        reset_position_ids=data_cfg.document_attention, reset_attention_mask=False,
        eod_mask_loss=False, create_attention_mask=False,
        data_files={prefix: f.idx_sha1 for prefix, f in facts.items()},
        **blends)
    if "blend" in blends:
        _drop_empty_splits(config, facts, data_cfg.split)
    return config


def _drop_empty_splits(config: GPTDatasetConfig, facts: dict[str, DatasetFacts],
                       split: str) -> None:
    """A split that gets no document of some prefix would make megatron-core loop forever
    (zero tokens per epoch): fail for train, drop valid/test with a warning."""
    for prefix, prefix_facts in facts.items():
        documents = prefix_facts.sequences  # megatron-core splits a GPT dataset by sequence
        for index, name in enumerate(("train", "valid", "test")):
            bounds = config.split_matrix[index]
            if bounds is None:
                continue
            begin, end = (int(round(b * documents)) for b in bounds)
            if end > begin:
                continue
            if name == "train":
                raise ConfigError(f"data.split: {split!r} leaves no training document of "
                                  f"{prefix} ({documents} documents)")
            log.warning("data.split %r leaves no %s document of %s (%d documents): no %s set",
                        split, name, prefix, documents, name)
            config.split_matrix[index] = None


def build_datasets(data_cfg: DataConfig, tokenizer: Tokenizer, seq_length: int,
                   num_samples: tuple[int, int, int], seed: int, cache_dir: str | None,
                   is_built_on_rank: Callable[[], bool] = lambda: True) -> tuple[Any, Any, Any]:
    """(train, valid, test) datasets with at least `num_samples` samples each (None for a split
    that gets no data). Call on every rank: megatron-core synchronises the cache building with
    barriers. By default every rank gets its datasets (each reads the memory-mapped files itself,
    so no tensor-parallel broadcast of batches is needed); pass `is_built_on_rank` to build them
    only where batches are consumed."""
    config = gpt_dataset_config(data_cfg, tokenizer, seq_length, seed, cache_dir)
    builder = BlendedMegatronDatasetBuilder(FileKeyedGPTDataset, list(num_samples),
                                            is_built_on_rank, config)
    with _process_group_for_caching(config.path_to_cache):
        train, valid, test = builder.build()
    return train, valid, test


@contextmanager
def _process_group_for_caching(cache_dir: str | None) -> Iterator[None]:
    """megatron-core's BlendedDataset asks torch.distributed for the rank whenever it caches its
    indices, so a single process without a process group gets a private one-rank group for the
    duration of the build."""
    if not cache_dir or torch.distributed.is_initialized():
        yield
        return
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0,
                                         world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
