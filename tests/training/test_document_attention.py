"""The trainer with `data.document_attention`: the positions reach the model (the losses change)
and data parallelism (ZeRO-1, ZeRO-3) and the pipeline give the 1-rank losses (fp32, gloo).

nGPT only: what the trainer adds (the batch plumbing, DeepSpeed's engines and pipeline) does not
depend on the model, and both models are checked at TP=2 and PP=2 in tests/models. Layouts agree
to ~5e-7 here, and document attention moves these near-uniform first losses by 4e-4 or more, so
the comparison is tighter than test_layouts.py's."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_ngpt.data.indexed import IndexedDatasetWriter
from tests.training.trainer_runs import assert_close, losses, train

STEPS = 4
DOCUMENT_ATTENTION = "data.document_attention=true"
LAYOUTS = {  # name: (ranks, flags)
    "dp2-zero1": (2, ["--zero-stage", "1"]),
    "dp2-zero3": (2, ["--zero-stage", "3"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"]),
}


@pytest.fixture(scope="module")
def short_documents(tmp_path_factory, sp_tokenizer) -> str:
    """Documents of 3-20 tokens: every 32-token sample packs several."""
    rng = np.random.default_rng(0)
    prefix = str(tmp_path_factory.mktemp("short_documents") / "docs")
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for _ in range(600):
            doc = rng.integers(10, sp_tokenizer.vocab_size, size=rng.integers(2, 20))
            writer.add_document(np.append(doc, sp_tokenizer.eod_id).astype(np.uint16))
    return prefix


def run(tmp_path_factory, name: str, ranks: int, prefix: str, tokenizer, *flags: str
        ) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp(name)
    train(ranks, run_dir, "ngpt", prefix, tokenizer, "--train-iters", str(STEPS), *flags)
    return losses(run_dir)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, short_documents, sp_tokenizer_path) -> dict[int, float]:
    return run(tmp_path_factory, "1rank", 1, short_documents, sp_tokenizer_path,
               "--zero-stage", "0", DOCUMENT_ATTENTION)


@pytest.mark.slow
def test_document_attention_changes_the_losses(one_rank, tmp_path_factory, short_documents,
                                               sp_tokenizer_path):
    plain = run(tmp_path_factory, "plain", 1, short_documents, sp_tokenizer_path,
                "--zero-stage", "0")
    assert plain.keys() == one_rank.keys()
    assert all(abs(plain[s] - one_rank[s]) > 1e-4 for s in plain), (plain, one_rank)


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_reproduces_single_rank_losses(layout, one_rank, tmp_path_factory,
                                              short_documents, sp_tokenizer_path):
    ranks, flags = LAYOUTS[layout]
    got = run(tmp_path_factory, layout, ranks, short_documents, sp_tokenizer_path, *flags,
              DOCUMENT_ATTENTION)
    assert len(got) == STEPS
    assert_close(got, one_rank, rel=1e-6)
