"""The tokenizer interface over SentencePiece and Hugging Face tokenizer.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_ngpt.data.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer
from megatron_ngpt.data.tokenizer_training import train_sentencepiece, vocab_text

TEXTS = ["Hello world", "  two  spaces\nand a newline\n", "digits 12345 and 3.14",
         "non-ASCII: café, naïve, 東京, emoji 🙂", "tabs\tand trailing space "]


def test_sentencepiece_has_llama_special_ids(sp_tokenizer):
    assert isinstance(sp_tokenizer, SentencePieceTokenizer)
    assert sp_tokenizer.vocab_size == 1000
    assert (sp_tokenizer.bos_id, sp_tokenizer.eos_id) == (1, 2)
    assert sp_tokenizer.eod_id == sp_tokenizer.eos_id
    assert sp_tokenizer.pad_id == sp_tokenizer.eos_id  # LLaMA models have no pad piece


def test_sentencepiece_round_trips_text_exactly(sp_tokenizer):
    encoded = sp_tokenizer.encode_batch(TEXTS)
    assert [sp_tokenizer.decode(ids) for ids in encoded] == TEXTS
    assert encoded[0] == sp_tokenizer.encode(TEXTS[0])
    assert all(sp_tokenizer.bos_id not in ids and sp_tokenizer.eos_id not in ids
               for ids in encoded)


def test_sentencepiece_splits_digits_and_falls_back_to_bytes(sp_tokenizer):
    digits = sp_tokenizer.encode("9876543210")
    assert len(digits) >= 10  # one piece per digit (plus the dummy-prefix space)
    unseen = sp_tokenizer.encode("ℵ")  # not in the training text: UTF-8 bytes, never unk
    assert 0 not in unseen and len(unseen) >= 3


def test_train_tokenizer_accepts_plain_text(tmp_path):
    text = tmp_path / "plain.txt"
    text.write_text("The quick brown fox jumps over the lazy dog 42 times.\n" * 50
                    + "Pack my box with five dozen liquor jugs.\n" * 50)
    model = train_sentencepiece([str(text)], 300, str(tmp_path / "plain_sp"))
    assert Path(model).is_file() and (tmp_path / "plain_sp.vocab").is_file()
    tokenizer = load_tokenizer(model)
    assert tokenizer.vocab_size == 300
    assert tokenizer.decode(tokenizer.encode("lazy dog 42")) == "lazy dog 42"


def test_our_vocab_file_is_the_one_sentencepiece_writes(tmp_path):
    """train_sentencepiece writes the .vocab itself (SentencePiece's own writing reports success
    on a full disk): it must be byte for byte what SentencePiece writes."""
    import sentencepiece

    text = tmp_path / "plain.txt"
    text.write_text("".join(f"line {i}: caf\u00e9 and {i * 7} more words\n" for i in range(300)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "ref"), model_type="bpe", vocab_size=300,
        byte_fallback=True, minloglevel=2)
    model = (tmp_path / "ref.model").read_bytes()
    assert vocab_text(model) == (tmp_path / "ref.vocab").read_bytes()


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXTS * 20, trainer)
    folder = tmp_path_factory.mktemp("hf")
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def test_hf_tokenizer_json_loads_and_round_trips(hf_tokenizer_dir):
    tokenizer = load_tokenizer(hf_tokenizer_dir)  # a folder with tokenizer.json
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.path.endswith("tokenizer.json")
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.eod_id) == (1, 2, 2)
    assert tokenizer.vocab_size >= 259
    encoded = tokenizer.encode_batch(TEXTS)
    assert [tokenizer.decode(ids) for ids in encoded] == TEXTS
    assert tokenizer.decode(encoded[0] + [tokenizer.eos_id]) == TEXTS[0]


def test_hf_tokenizer_reads_special_tokens_from_tokenizer_config(hf_tokenizer_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((hf_tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "</s>"}, "eos_token": "<s>", "pad_token": "<unk>"}))
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (2, 1, 0)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json"):
        load_tokenizer(tmp_path)
