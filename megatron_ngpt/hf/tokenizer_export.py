"""Write the training tokenizer into an export folder so that AutoTokenizer encodes like training.

SentencePiece models: ``tokenizer.model`` is copied, and a ``tokenizer.json`` is derived from
transformers' own conversion (LlamaTokenizer) with one fix: SentencePiece always prepends its
dummy prefix "▁", while the converted Metaspace pre-tokenizer skips it when the text already
starts with a space, so ``" x"`` would encode differently. The fix is LLaMA's original
normalizer (prepend "▁", then spaces to "▁"). Training documents never start with bos (the
preprocessing only appends eos), so the tokenizer does not add bos either.

Hugging Face ``tokenizer.json`` files are copied as they are. Either way the export is checked
against the training tokenizer on a set of probe texts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from megatron_ngpt.data.tokenizer import SentencePieceTokenizer, Tokenizer, load_tokenizer

PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces,  double  spaces and a trailing one ",
    " one leading space\nnew line\n\n\tand a tab",
    "digits 1234567890, 3.14159 and -42",
    "naïve café — Ünïcödé, 日本語のテキスト, emoji 🙂👍",
    "",
)


class TokenizerExportError(ValueError):
    """The exported tokenizer would not encode like the training tokenizer."""


def _token_names(tokenizer: Tokenizer) -> dict[str, str]:
    """bos/eos (and unk for SentencePiece) as the token strings tokenizer_config.json wants."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer.path)
        ids = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id()}
        return {name: sp.id_to_piece(i) for name, i in ids.items() if i >= 0}
    from tokenizers import Tokenizer as HFTokenizer

    vocab = HFTokenizer.from_file(tokenizer.path)
    return {"bos_token": vocab.id_to_token(tokenizer.bos_id),
            "eos_token": vocab.id_to_token(tokenizer.eos_id)}


def _sentencepiece_tokenizer_json(model_path: Path, output_dir: Path) -> None:
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model_path, Path(tmp) / "tokenizer.model")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "legacy": False}))
        backend = AutoTokenizer.from_pretrained(tmp).backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.save(str(output_dir / "tokenizer.json"))


def export_tokenizer(tokenizer_path: str | Path, output_dir: Path) -> Tokenizer:
    """Write tokenizer files into `output_dir`; returns the training tokenizer (for its ids)."""
    tokenizer = load_tokenizer(tokenizer_path)
    source = Path(tokenizer.path)
    if isinstance(tokenizer, SentencePieceTokenizer):
        shutil.copy(source, output_dir / "tokenizer.model")
        _sentencepiece_tokenizer_json(source, output_dir)
    else:
        shutil.copy(source, output_dir / "tokenizer.json")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **_token_names(tokenizer),
    }
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    check_tokenizer(output_dir, tokenizer)
    return tokenizer


def exported_tokenizer(tokenizer_path: str | Path):
    """The Hugging Face tokenizer that an export of `tokenizer_path` loads (the same files,
    written to a temporary folder and read back), for code that must tokenize exactly like the
    exported model without exporting it: the in-loop evaluation."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        export_tokenizer(tokenizer_path, Path(tmp))
        return AutoTokenizer.from_pretrained(tmp)


def check_tokenizer(output_dir: Path, reference: Tokenizer,
                    texts: tuple[str, ...] = PROBE_TEXTS) -> None:
    """Raise if AutoTokenizer on `output_dir` encodes any text differently from `reference`."""
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(str(output_dir))
    for text in texts:
        got = exported(text, add_special_tokens=False)["input_ids"]
        want = reference.encode(text)
        if got != want:
            raise TokenizerExportError(
                f"{output_dir}: the exported tokenizer encodes {text!r} as {got[:20]}, "
                f"training's tokenizer {reference.path} as {want[:20]}")
