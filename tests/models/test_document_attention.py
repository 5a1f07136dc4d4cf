"""Document attention: a packed document's logits are its logits alone, at TP=1, TP=2 and PP=2,
for both models; the math is the reference's; without positions the model is unchanged."""

from __future__ import annotations

import pytest
import torch

from megatron_ngpt.models import documents
from megatron_ngpt.models.documents import DenseDocumentMask, FlexDocumentMask, document_ids
from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.transformer_config import build_transformer_config
from tests.distributed import run_on_ranks
from tests.models import document_worker as worker
from tests.models.reference import RefConfig, gpt2_forward, ngpt_forward
from tests.models.test_reference_parity import _perturb_vectors_, reference_weights
from tests.tiny import tiny_config


def assert_same_logits(packed: torch.Tensor, alone: torch.Tensor) -> None:
    """Equal to 1e-6 of the logits' scale (fp32). The plain causal model alone differs by that
    much when the same document heads a longer batch (GPT-2: 2.5e-6 at logits of 3.6), from
    matmuls of another shape."""
    assert packed.shape == alone.shape
    tolerance = 1e-6 * alone.abs().max().item()
    torch.testing.assert_close(packed, alone, rtol=0, atol=tolerance)


@pytest.mark.parametrize("arch", worker.ARCHS)
def test_packed_document_has_its_logits_alone(single_rank, arch: str) -> None:
    result = worker.packed_and_alone(arch)
    assert_same_logits(result["packed"], result["alone"])


@pytest.mark.parametrize("arch", worker.ARCHS)
def test_without_document_attention_packing_changes_the_logits(single_rank, arch: str) -> None:
    """What the feature removes: without positions, the documents before `DOC` reach it."""
    lm = worker.model(arch)
    tokens, _, starts = worker.batch(worker.PACKED)
    with torch.no_grad():
        packed = worker.doc_logits(lm(tokens), starts)
        alone = lm(worker.DOC[None])
    assert (packed - alone).abs().max() > 1e-2


@pytest.fixture(scope="module")
def tensor_parallel_results() -> dict:
    return run_on_ranks(2, "tests.models.document_worker:tensor_parallel", 2, timeout=300)[0]


@pytest.fixture(scope="module")
def pipeline_results() -> dict:
    ranks = run_on_ranks(2, "tests.models.document_worker:pipeline", 2, timeout=300)
    return next(result for result in ranks if result is not None)


@pytest.mark.slow
@pytest.mark.parametrize("arch", worker.ARCHS)
def test_packed_document_has_its_logits_alone_tp2(tensor_parallel_results, arch: str) -> None:
    result = tensor_parallel_results[arch]
    assert_same_logits(result["packed"], result["alone"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", worker.ARCHS)
def test_packed_document_has_its_logits_alone_pp2(pipeline_results, arch: str) -> None:
    """Through DeepSpeed's pipeline engine, the positions travelling between the stages; alone
    means first in a row of the same length (the stages expect one shape)."""
    result = pipeline_results[arch]
    assert_same_logits(result["packed"], result["alone"])


@pytest.mark.parametrize("arch,normalization", [
    ("ngpt", "RMSNorm"), ("gpt2", "RMSNorm"), ("gpt2", "LayerNorm"),
])
def test_document_attention_matches_reference(single_rank, arch: str, normalization: str) -> None:
    """float64, against the reference reading the documents from the EOD tokens itself."""
    cfg = tiny_config(arch, f"model.normalization={normalization}").model
    torch.manual_seed(0)
    model = LanguageModel(build_transformer_config(cfg, worker.VOCAB, params_dtype=torch.float64))
    model = model.double().eval()
    _perturb_vectors_(model)
    tokens, positions, _ = worker.batch(worker.PACKED)
    ref_cfg = RefConfig(cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads,
                        cfg.rotary_base, normalization, cfg.layernorm_epsilon)
    forward = ngpt_forward if arch == "ngpt" else gpt2_forward
    weights = reference_weights(model, arch, cfg.num_attention_heads)
    expected = forward(weights, tokens, ref_cfg, eod=worker.EOD)
    with torch.no_grad():
        logits = model(tokens, position_ids=positions)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-10)
    # The reference's documents matter: read as one document, the logits are far off.
    assert (forward(weights, tokens, ref_cfg) - expected).abs().max() > 1e-2


def test_rope_reads_each_tokens_position(single_rank) -> None:
    """RoPE positions restart at every document: each token's angles are the table's row at
    its position (relative attention would hide an offset from the logits)."""
    lm = worker.model("gpt2")
    seen = {}
    stage = lm.layers[0]
    hook = stage.layer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    tokens, positions, _ = worker.batch(worker.PACKED)
    with torch.no_grad():
        lm(tokens, position_ids=positions)
    hook.remove()
    table = stage.rotary(tokens.shape[1])[:, 0, 0]  # [s, d]: row p is position p
    angles = seen["rotary_pos_emb"]  # [s, b, 1, d]
    assert angles.shape == (tokens.shape[1], tokens.shape[0], 1, table.shape[-1])
    for b in range(tokens.shape[0]):
        for i in range(tokens.shape[1]):
            assert torch.equal(angles[i, b, 0], table[positions[b, i]]), (b, i)


@pytest.mark.parametrize("arch", worker.ARCHS)
def test_without_positions_the_forward_is_the_plain_causal_one(single_rank, arch: str) -> None:
    """Bit for bit the stages' causal computation (no mask, the RoPE table as it is): document
    attention adds nothing to the default path."""
    lm = worker.model(arch)
    tokens, _, _ = worker.batch(worker.PACKED)
    with torch.no_grad():
        hidden = lm.embedding.word_embeddings(tokens).transpose(0, 1).contiguous()
        for stage in lm.layers:
            hidden = stage.layer(hidden, attention_mask=None,
                                 rotary_pos_emb=stage.rotary(hidden.shape[0]))[0]
        expected = lm.head(hidden)
        assert torch.equal(lm(tokens), expected)


def test_layers_of_one_forward_share_one_mask() -> None:
    positions = worker.batch(worker.PACKED)[1]
    first = documents.document_mask(positions)
    assert documents.document_mask(positions) is first
    assert documents.document_mask(positions.clone()) is not first


def test_document_ids_start_at_every_position_zero() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 0, 1], [0, 1, 2, 3, 4, 5]])
    assert document_ids(positions).tolist() == [[1, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 1]]


@pytest.mark.slow
def test_flex_block_mask_is_the_dense_mask() -> None:
    """The CUDA path's block mask allows exactly what the dense CPU mask allows (flex_attention's
    eager reference on CPU, forward only; documents across 128-token blocks)."""
    gen = torch.Generator().manual_seed(0)
    lengths = [[50, 200, 6, 1, 43], [300]]
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    q, k, v = (torch.randn(2, 4, 300, 16, generator=gen) for _ in range(3))
    dense = DenseDocumentMask(positions).attend(q, k, v, scale=0.3, enable_gqa=False)
    flex = FlexDocumentMask(positions).attend(q, k, v, scale=0.3, enable_gqa=False)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-6)
