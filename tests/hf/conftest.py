"""Fixtures for export/eval tests: a tiny SentencePiece tokenizer and tiny models, exported.

Everything runs offline: the Hugging Face hub and datasets are switched to offline mode before
transformers, datasets or lm-eval are imported.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from megatron_ngpt.config import Config, padded_vocab_size  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402

WORDS = ("the a one two cat dog bird sat ran flew on under over mat tree house river hill "
         "big small red green quick slow happy tired morning night, and but then. "
         "Café naïve 42 1999").split()


def sample_text(seed: int, lines: int) -> str:
    """Deterministic word salad with punctuation, digits and a little non-ASCII."""
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
                     for _ in range(lines))


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """A ~300-piece LLaMA-style SentencePiece BPE model (byte fallback) trained on ~10 KB."""
    import sentencepiece

    root = tmp_path_factory.mktemp("tokenizer")
    corpus = root / "corpus.txt"
    corpus.write_text(sample_text(0, 300))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "tiny"), model_type="bpe", vocab_size=300,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    return root / "tiny.model"


def hf_config(arch: str, sp_model: Path, *overrides: str) -> Config:
    """The tiny model of `arch` at context 64 with the `sp_model` tokenizer."""
    return tiny_config(arch, "data.seq_length=64", f"data.tokenizer_model={sp_model}", *overrides)


@torch.no_grad()
def build_model(config: Config, seed: int = 0):
    """A TP=1 `LanguageModel` at random init, with every vector parameter (scaling vectors,
    norm weights and biases) perturbed so that no two entries are equal."""
    from megatron_ngpt.models.language_model import LanguageModel
    from megatron_ngpt.models.transformer_config import build_transformer_config

    torch.manual_seed(seed)
    vocab = padded_vocab_size(300, config.model.make_vocab_size_divisible_by, 1)
    model = LanguageModel(build_transformer_config(config.model, vocab))
    for name, param in model.named_parameters():
        if param.dim() != 1:
            continue
        noise = torch.rand_like(param)
        if name.endswith(".bias"):
            param.copy_(noise - 0.5)
        else:
            param.mul_(0.5 + noise)
        if "alpha" in name:
            param[::2].neg_()  # the residual step uses |alpha|
        if name.endswith("s_z.weight"):
            param.mul_(20.0)  # spread the logits so that greedy decoding has no near-ties
    return model.eval()


@pytest.fixture(scope="session")
def exported(tmp_path_factory, sp_model, single_rank):
    """``exported(arch, *overrides)`` -> (LanguageModel, fp32 export folder), built once each."""
    from megatron_ngpt.hf.export import export_to_hf

    cache: dict[tuple[str, ...], tuple] = {}

    def get(arch: str, *overrides: str):
        key = (arch, *overrides)
        if key not in cache:
            config = hf_config(arch, sp_model, *overrides)
            model = build_model(config)
            folder = tmp_path_factory.mktemp("export") / "_".join(key).replace("=", "-")
            cache[key] = model, export_to_hf(config, model.state_dict(), sp_model, folder, "fp32")
        return cache[key]

    return get
