"""nGPT scaling vectors: stored at `init_scaling`, used at `init_value` (docs/ngpt-math.md).

The optimizer sees a parameter of size ~`init_scaling` while the model sees
``stored * (init_value / init_scaling)``. Scaling vectors are float32, get no weight decay and are
never normalized. Vectors that scale a tensor-parallel output dimension are sharded like it and
marked so that DeepSpeed counts them in the grad norm and megatron-core's sharded state dict
knows their axis.
"""

from __future__ import annotations

import math

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

SCALING_ATTR = "ngpt_scaling"


def is_scaling_vector(param: torch.Tensor) -> bool:
    return getattr(param, SCALING_ATTR, False)


# docs/ngpt-math.md's table: kind -> (init_value, whether init_scaling is 1/sqrt(d) or 1).
SCALING_INITS: dict[str, tuple[float, bool]] = {
    "alpha": (0.05, True),  # alpha_A, alpha_M
    "s_qk": (1.0, True),
    "s_uv": (1.0, False),  # s_u, s_v
    "s_z": (1.0, True),
}


def scaling_init(kind: str, hidden_size: int) -> tuple[float, float]:
    """(init_value, init_scaling) of a scaling vector of this kind."""
    value, by_sqrt_d = SCALING_INITS[kind]
    return value, 1.0 / math.sqrt(hidden_size) if by_sqrt_d else 1.0


def scaling_multiplier(kind: str, hidden_size: int) -> float:
    """stored -> effective factor, ``init_value / init_scaling``."""
    value, scaling = scaling_init(kind, hidden_size)
    return value / scaling


class ScalingVector(MegatronModule):
    """A learnable per-dimension scale with nGPT's stored-vs-effective parametrization."""

    def __init__(
        self,
        config: TransformerConfig,
        size: int,
        kind: str,
        tensor_parallel: bool,
    ) -> None:
        super().__init__(config=config)
        init_value, init_scaling = scaling_init(kind, config.hidden_size)
        self.tensor_parallel = tensor_parallel
        tp = parallel_state.get_tensor_model_parallel_world_size() if tensor_parallel else 1
        if size % tp:
            raise ValueError(f"scaling vector of size {size} cannot be split over TP={tp}")
        self.weight = torch.nn.Parameter(
            torch.full((size // tp,), init_scaling, dtype=torch.float32))
        self.multiplier = init_value / init_scaling
        setattr(self.weight, SCALING_ATTR, True)
        if tensor_parallel:
            set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)

    def forward(self) -> torch.Tensor:
        """The effective (local) scale, in float32 (float64 in a float64 model)."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        return self.weight.to(dtype) * self.multiplier

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        state = self.state_dict(prefix="", keep_vars=True)
        axis_map = {"weight": 0} if self.tensor_parallel else {}
        return make_sharded_tensors_for_checkpoint(state, prefix, axis_map, sharded_offsets)
