"""Train a LLaMA-style SentencePiece BPE tokenizer on jsonl or plain-text files.

The settings are LLaMA's (byte fallback so no text is ever unknown, digits split one by one,
identity normalization so decoding gives the input back, unk=0 bos=1 eos=2 and no pad id); only
the vocabulary size and the amount of text sampled differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from megatron_ngpt.data.sources import expand_inputs, open_binary


def iter_lines(files: Iterable[str], json_key: str = "text") -> Iterator[str]:
    """Non-empty lines of text: of each jsonl record's `json_key` for ``.jsonl``/``.json``
    files (compressed or not), of the file itself otherwise. Bad records are skipped here: a
    tokenizer only needs a sample of the text."""
    for path in files:
        is_json = any(part in (".jsonl", ".json") for part in Path(path).suffixes)
        with open_binary(path) as stream:
            for raw in stream:
                text = raw.decode("utf-8", errors="replace")
                if is_json:
                    try:
                        text = json.loads(text)[json_key]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
                    if not isinstance(text, str):
                        continue
                for line in text.splitlines():
                    if line.strip():
                        yield line


def train_sentencepiece(inputs: Iterable[str], vocab_size: int, output_prefix: str,
                        json_key: str = "text", input_sentence_size: int = 1_000_000,
                        num_threads: int = 1) -> str:
    """Writes ``{output_prefix}.model`` and ``.vocab``; returns the model path."""
    import sentencepiece

    files = expand_inputs(inputs)
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter_lines(files, json_key),
        model_prefix=output_prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        character_coverage=0.99995,
        max_sentence_length=16384,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=num_threads,
        minloglevel=2,
    )
    return f"{output_prefix}.model"
