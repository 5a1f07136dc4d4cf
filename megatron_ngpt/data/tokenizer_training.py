"""Train a LLaMA-style SentencePiece BPE tokenizer on jsonl or plain-text files.

The settings are LLaMA's (byte fallback so no text is ever unknown, digits split one by one,
identity normalization so decoding gives the input back, unk=0 bos=1 eos=2 and no pad id); only
the vocabulary size and the amount of text sampled differ. SentencePiece hands the model back in
memory and we write ``.model`` and ``.vocab`` ourselves, all-or-nothing: its own file writing
reports success on a full disk and leaves a truncated model behind.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from megatron_ngpt.data.files import (
    DataError,
    os_reason,
    remove_quietly,
    temporary_name,
    write_files_atomically,
)
from megatron_ngpt.data.sources import expand_inputs, read_lines


def iter_lines(files: Iterable[str], json_key: str = "text") -> Iterator[str]:
    """Non-empty lines of text: of each jsonl record's `json_key` for ``.jsonl``/``.json``
    files (compressed or not), of the file itself otherwise. Bad records are skipped here: a
    tokenizer only needs a sample of the text. A truncated or corrupt file is a DataError."""
    for path in files:
        is_json = any(part in (".jsonl", ".json") for part in Path(path).suffixes)
        for _, raw in read_lines(path):
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


def _check_writable(output_prefix: str) -> None:
    """Fail before hours of training, not after, when the outputs cannot be written."""
    probe = temporary_name(f"{output_prefix}.model")
    try:
        Path(probe).parent.mkdir(parents=True, exist_ok=True)
        open(probe, "xb").close()
    except OSError as err:
        raise DataError(f"{output_prefix}.model: cannot write: {os_reason(err)}") from None
    remove_quietly(probe)


def vocab_text(model: bytes) -> bytes:
    """SentencePiece's ``.vocab`` file for a serialized model: ``piece<TAB>score`` per id, the
    score printed as C++'s ``%g`` would."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    return "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                   for i in range(processor.vocab_size())).encode()


def train_sentencepiece(inputs: Iterable[str], vocab_size: int, output_prefix: str,
                        json_key: str = "text", input_sentence_size: int = 1_000_000,
                        num_threads: int = 1) -> str:
    """Writes ``{output_prefix}.model`` and ``.vocab``; returns the model path. Raises DataError
    (and writes nothing) for a truncated or corrupt input, an output that cannot be written or
    a training that SentencePiece refuses."""
    import sentencepiece

    files = expand_inputs(inputs)
    _check_writable(output_prefix)
    failures: list[DataError] = []

    def sentences() -> Iterator[str]:
        try:
            yield from iter_lines(files, json_key)
        except DataError as err:  # SentencePiece would wrap it in a RuntimeError with a trace
            failures.append(err)
            raise

    model = io.BytesIO()  # SentencePiece writes the serialized model here
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
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
    except RuntimeError as err:
        if failures:
            raise failures[0] from None
        reason = str(err).strip().splitlines()[0]
        raise DataError(f"{output_prefix}.model: SentencePiece training failed: {reason}") \
            from None
    write_files_atomically({f"{output_prefix}.model": model.getvalue(),
                            f"{output_prefix}.vocab": vocab_text(model.getvalue())})
    return f"{output_prefix}.model"

