"""Attention within each document of a packed sequence (`data.document_attention`).

A training sequence packs several documents, each ending with EOD. With document attention the
dataset restarts ``position_ids`` at 0 after every EOD (megatron-core's `reset_position_ids`),
and those positions are all the model needs: RoPE reads each token's angle at its position
(`rotary_at`), and a token attends to the earlier tokens of its own document, a document starting
wherever the position is 0 (`document_ids`). Only ``[b, s]`` positions travel with the hidden
states, also between pipeline stages.

The mask has two implementations with one interface (`attend`): on CPU a dense boolean
``[b, 1, s, s]`` mask for SDPA; on CUDA a flex_attention `BlockMask` built from the document ids,
so no ``s x s`` mask is materialised and key blocks outside a query's document are skipped.
`document_mask` builds it once for all the layers that see the same positions tensor.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


@functools.cache
def _compiled(function):
    """`function` compiled once, on first use (eager flex_attention materialises the scores;
    compiling at import would cost every process that imports the model)."""
    return torch.compile(function, dynamic=False)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` index of each token's document in its sequence: a document starts at every
    position 0 (the first token of a sequence always does)."""
    return (position_ids == 0).cumsum(dim=-1)


def rotary_at(table: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """RoPE angles of every token, ``[s, b, 1, d]``, from megatron-core's table ``[S, 1, 1, d]``
    (row ``p`` is position ``p``) and positions ``[b, s]``."""
    return table[position_ids.t(), 0]


class DenseDocumentMask:
    """Causal within documents as one boolean ``[b, 1, s, s]`` mask (True: may attend), for
    `scaled_dot_product_attention` on CPU."""

    def __init__(self, position_ids: torch.Tensor) -> None:
        docs = document_ids(position_ids)
        s = docs.shape[-1]
        causal = torch.ones(s, s, dtype=torch.bool, device=docs.device).tril()
        self.allowed = ((docs[:, :, None] == docs[:, None, :]) & causal).unsqueeze(1)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               enable_gqa: bool) -> torch.Tensor:
        """Attention of ``[b, heads, s, d_head]`` queries, keys and values."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.allowed, scale=scale,
                                              enable_gqa=enable_gqa)


class FlexDocumentMask:
    """Causal within documents as a flex_attention `BlockMask` (CUDA: compiled kernels; on CPU
    the eager reference, which only tests use)."""

    def __init__(self, position_ids: torch.Tensor) -> None:
        docs = document_ids(position_ids)
        b, s = docs.shape

        def within_document(batch, head, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (docs[batch, q_idx] == docs[batch, kv_idx])

        build = _compiled(create_block_mask) if docs.is_cuda else create_block_mask
        self.block_mask: BlockMask = build(within_document, b, None, s, s, device=docs.device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
               enable_gqa: bool) -> torch.Tensor:
        """Attention of ``[b, heads, s, d_head]`` queries, keys and values."""
        attention = _compiled(flex_attention) if q.is_cuda else flex_attention
        return attention(q, k, v, block_mask=self.block_mask, scale=scale, enable_gqa=enable_gqa)


DocumentMask = DenseDocumentMask | FlexDocumentMask


class _LastMask:
    """The mask of the last positions tensor seen. The layers of one forward pass (of one
    pipeline stage) get the very same tensor, so they share one mask; holding the tensor keeps
    its identity from being reused by another."""

    def __init__(self) -> None:
        self.position_ids: torch.Tensor | None = None
        self.mask: DocumentMask | None = None

    def get(self, position_ids: torch.Tensor) -> DocumentMask:
        if self.position_ids is not position_ids:
            mask_type = FlexDocumentMask if position_ids.is_cuda else DenseDocumentMask
            self.mask = mask_type(position_ids)
            self.position_ids = position_ids
        return self.mask


document_mask = _LastMask().get
