"""One small tokenizer interface over SentencePiece models and Hugging Face `tokenizer.json` files.

Everything downstream (preprocessing, datasets, evaluation) sees only :class:`Tokenizer`. Special
ids follow LLaMA: unk=0, bos=1, eos=2. LLaMA's SentencePiece model has no pad token (pad=-1), so
``pad_id`` falls back to ``eos_id``: padding is always masked out of the loss, and eos is the one
id every consumer already treats as "nothing more to say". ``eod_id`` (end of document, appended
after every document by preprocessing) is the eos id.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

from megatron_ngpt.data.files import DataError


class Tokenizer(ABC):
    """Text <-> ids. ``encode``/``encode_batch`` never add bos/eos; ``decode`` drops special ids."""

    path: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def eod_id(self) -> int:
        return self.eos_id

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once (the fast path used by preprocessing)."""

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Ids back to text; special tokens (bos, eos, pad) are not rendered."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    description = "SentencePiece model"

    def __init__(self, path: str | Path):
        import sentencepiece

        self.path = str(path)
        self._sp = sentencepiece.SentencePieceProcessor(model_file=self.path)
        self.vocab_size = self._sp.vocab_size()
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        if self.eos_id < 0:
            raise DataError(f"{self.path}: the SentencePiece model defines no eos token")
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # One thread: preprocessing parallelises over worker processes instead.
        return self._sp.encode(texts, num_threads=1)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


# Names tried, in order, when no tokenizer_config.json says which tokens are bos/eos.
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "[CLS]")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[SEP]")


def _special_token(config: dict, key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):  # AddedToken serialised as {"content": ...}
        value = value.get("content")
    return value


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` model; bos/eos come from a sibling tokenizer_config.json when
    there is one, else from the usual token names."""

    description = "Hugging Face tokenizer.json"

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _HFTokenizer

        self.path = str(path)
        self._tok = _HFTokenizer.from_file(self.path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        config_path = Path(self.path).with_name("tokenizer_config.json")
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        bos = self._find(_special_token(config, "bos_token"), _BOS_NAMES)
        eos = self._find(_special_token(config, "eos_token"), _EOS_NAMES)
        if eos is None:
            raise DataError(f"{self.path}: no end-of-text token found (tried {_EOS_NAMES}); "
                             "name it as eos_token in a tokenizer_config.json beside it")
        self.eos_id = eos
        self.bos_id = bos if bos is not None else eos
        pad = self._find(_special_token(config, "pad_token"), ())
        self.pad_id = pad if pad is not None else eos

    def _find(self, configured: str | None, names: tuple[str, ...]) -> int | None:
        for name in ((configured,) if configured else names):
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A SentencePiece ``*.model``, a ``tokenizer.json``, or a folder holding either (a
    ``tokenizer.model`` wins, as in LLaMA checkpoints). A missing file is a FileNotFoundError,
    one that does not load a DataError; both name it."""
    path = Path(path)
    if path.is_dir():
        for name in ("tokenizer.model", "tokenizer.json"):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise FileNotFoundError(f"{path}: no tokenizer.model or tokenizer.json in this folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    kind = HFTokenizer if path.suffix == ".json" else SentencePieceTokenizer
    try:
        return kind(path)
    except (DataError, ImportError):
        raise
    except Exception as err:  # sentencepiece raises RuntimeError/OSError, tokenizers Exception
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable {kind.description} ({reason})") from None
