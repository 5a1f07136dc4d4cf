"""The `mpu` object DeepSpeed expects, over megatron-core's `parallel_state`.

Only used without a pipeline (DeepSpeed's pipeline engine builds its own grid), so "model
parallel" is tensor parallel here: DeepSpeed counts replicated parameters in the grad norm on
model-parallel rank 0 and sums over the model-parallel group.
"""

from __future__ import annotations

from megatron.core import parallel_state as ps


class MegatronMPU:
    """Maps DeepSpeed's mpu API onto megatron-core's process groups."""

    get_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_pipeline_model_parallel_group = staticmethod(ps.get_pipeline_model_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(
        ps.get_pipeline_model_parallel_world_size)

    get_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
