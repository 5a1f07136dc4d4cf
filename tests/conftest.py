"""Fixtures shared by every suite: the small real corpus, tokenizer and dataset of `tests/data`."""

from tests.data.conftest import (  # noqa: F401
    data_dir,
    sp_tokenizer,
    sp_tokenizer_path,
    tiny_corpus,
    tiny_dataset_prefix,
)
