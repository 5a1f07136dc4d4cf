"""One tensor-parallel run of both tiny models (test_tensor_parallel.py, through `run_on_ranks`).

Every rank builds the model with the same seed (megatron's CPU init then makes the same full
matrices at any TP), runs forward and backward, takes a plain SGD step that moves the matrices
off the sphere, and re-normalizes with `normalize_model_`. Rank 0 saves the full (gathered)
logits, loss, gradients and normalized matrices (the other ranks return None).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.normalize import normalize_model_, normalized_dim
from megatron_ngpt.models.transformer_config import build_transformer_config
from megatron_ngpt.parallel.state import init_distributed
from tests.tiny import tiny_config

VOCAB = 256


def gather_tp(shard: torch.Tensor, dim: int, stride: int = 1) -> torch.Tensor:
    """The full tensor from its TP shards; a shard of a stride-s split holds s interleaved pieces
    (megatron's `_initialize_affine_weight_cpu`: piece k of the full tensor is on rank k % TP)."""
    group = parallel_state.get_tensor_model_parallel_group()
    shards = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shards, shard.contiguous(), group=group)
    pieces = [s.chunk(stride, dim) for s in shards]
    return torch.cat([p[j] for j in range(stride) for p in pieces], dim)


def gather_param(param: torch.nn.Parameter, value: torch.Tensor) -> torch.Tensor:
    """Gather `value` (the parameter or its grad) along the parameter's TP partition dim."""
    if getattr(param, "tensor_model_parallel", False):
        return gather_tp(value, param.partition_dim, param.partition_stride)
    replicas = gather_tp(value.unsqueeze(0), 0)
    torch.testing.assert_close(replicas, value.expand_as(replicas), rtol=0, atol=1e-6)
    return value


def run(arch: str) -> dict[str, object]:
    torch.manual_seed(1234)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    model = LanguageModel(build_transformer_config(tiny_config(arch).model, VOCAB, tp))
    gen = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, VOCAB, (2, 2, 16), generator=gen)
    logits = model(tokens)
    loss = model(tokens, labels)
    loss.backward()
    params = dict(model.named_parameters())
    grads = {name: gather_param(p, p.grad) for name, p in params.items()}

    with torch.no_grad():
        for p in params.values():
            p.add_(p.grad, alpha=-100.0)
        moved = {n: gather_param(p, p.detach().clone()) for n, p in params.items()
                 if normalized_dim(p) is not None}
        for name, full in moved.items():  # the step must leave work for the normalization
            assert (full.norm(dim=normalized_dim(params[name])) - 1).abs().max() > 1e-2, name
        normalize_model_(model)
    normalized = {}
    for name, p in params.items():
        dim = normalized_dim(p)
        if dim is None:
            continue
        local_norms = p.detach().norm(dim=dim)
        torch.testing.assert_close(local_norms, torch.ones_like(local_norms))
        normalized[name] = gather_param(p, p.detach())
        full = moved[name]
        torch.testing.assert_close(normalized[name], full / full.norm(dim=dim, keepdim=True))
    return {"logits": gather_tp(logits.detach(), -1), "loss": loss.detach(), "grads": grads,
            "normalized": normalized}


def run_both(tp: int) -> dict[str, dict[str, object]] | None:
    """Both models at tensor-parallel size `tp`: rank 0's full results, None elsewhere."""
    init_distributed(tp, 1, "cpu")
    results = {arch: run(arch) for arch in ("ngpt", "gpt2")}
    return results if dist.get_rank() == 0 else None
