"""AdamW parameter groups and nGPT's renormalization of the master weights under DeepSpeed.

After every optimizer step the *master* weights must be re-normalized: normalizing only the bf16
model copy is undone by the next step. The master slices this rank owns (a whole parameter, a
whole fp32 copy, or a fragment of a ZeRO flat partition that may cut rows) and the hook point
after the Adam update, before DeepSpeed copies the masters into the model, come from
`parallel/deepspeed_internals.py`. The owned fragments are normalized with
:func:`~megatron_ngpt.models.normalize.normalize_fragments_` over the data-parallel group (one
small all-reduce per step), so rows that a partition boundary splits get their full sum of squares.
"""

from __future__ import annotations

import torch

from megatron_ngpt.models.normalize import Fragment, normalize_fragments_, normalized_dim
from megatron_ngpt.models.scaling import is_scaling_vector
from megatron_ngpt.parallel.deepspeed_internals import MasterWeights

NORMALIZE_GROUP_KEY = "ngpt_normalize"


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; scaling vectors, norms and biases get none.

    Normalized matrices form their own group (flagged for the renormalization hook).
    """
    normalized, decayed, plain = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if normalized_dim(param) is not None:
            normalized.append(param)
        elif param.dim() >= 2 and not is_scaling_vector(param):
            decayed.append(param)
        else:
            plain.append(param)
    groups = [
        {"params": normalized, "weight_decay": weight_decay, NORMALIZE_GROUP_KEY: True},
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def master_fragment(masters: MasterWeights, param: torch.Tensor) -> Fragment:
    """The fragment of `param`'s master this rank normalizes (empty where it owns none: it still
    takes part in the all-reduce, whose partial sums must line up on every rank)."""
    dim = normalized_dim(param)
    owned = masters.slice(param)
    if owned is None:
        return Fragment(torch.empty(0, dtype=torch.float32, device=param.device),
                        tuple(param.shape), dim, 0)
    return Fragment(owned.view(), owned.shape, dim, owned.start)


def install_renormalization(masters: MasterWeights, model: torch.nn.Module) -> str:
    """Hook nGPT's renormalization into the optimizer step; returns where the masters live."""
    normalized = [p for p in model.parameters() if normalized_dim(p) is not None]

    @torch.no_grad()
    def renormalize(updated: list[torch.Tensor]) -> None:
        params = [p for p in updated if normalized_dim(p) is not None]
        if params:
            normalize_fragments_([master_fragment(masters, p) for p in params], masters.dp_group)

    masters.after_update(renormalize, normalized)
    return masters.layout
