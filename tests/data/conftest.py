"""Session fixtures other suites can reuse: a small real corpus, a tiny SentencePiece tokenizer
trained on it, and that corpus preprocessed into an indexed dataset. Built once per session."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from megatron_ngpt.data.demo_corpus import iter_documents
from megatron_ngpt.data.preprocess import preprocess
from megatron_ngpt.data.tokenizer import Tokenizer, load_tokenizer
from megatron_ngpt.data.tokenizer_training import train_sentencepiece

TINY_VOCAB = 1000
TINY_DOCUMENTS = 120


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_corpus(data_dir: Path) -> Path:
    """The first TINY_DOCUMENTS documents of the demo corpus (about 0.7 MB of English) as jsonl."""
    path = data_dir / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        for text in itertools.islice(iter_documents(), TINY_DOCUMENTS):
            stream.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def sp_tokenizer_path(data_dir: Path, tiny_corpus: Path) -> Path:
    """A LLaMA-style SentencePiece BPE model (vocab TINY_VOCAB) trained on `tiny_corpus`."""
    return Path(train_sentencepiece([str(tiny_corpus)], TINY_VOCAB, str(data_dir / "tiny_sp"),
                                    input_sentence_size=20000))


@pytest.fixture(scope="session")
def sp_tokenizer(sp_tokenizer_path: Path) -> Tokenizer:
    return load_tokenizer(sp_tokenizer_path)


@pytest.fixture(scope="session")
def tiny_dataset_prefix(data_dir: Path, tiny_corpus: Path, sp_tokenizer_path: Path) -> str:
    """`tiny_corpus` tokenized by `sp_tokenizer`: ``{prefix}.bin/.idx`` (uint16, eod-terminated)."""
    stats = preprocess(str(data_dir / "tiny"), str(sp_tokenizer_path), [str(tiny_corpus)],
                       progress=False)
    return stats.outputs[0]
