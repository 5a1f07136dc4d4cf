"""The tiny tokenizer and dataset of tests/data, shared with the SLURM tests."""

from tests.data.conftest import (  # noqa: F401
    data_dir,
    sp_tokenizer_path,
    tiny_corpus,
    tiny_dataset_prefix,
)
