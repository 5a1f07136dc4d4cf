"""Memory plan per GPU: what a training step of a config holds, term by term, and its peak.

Every term is a function of the config's shape and parallel layout, so the plan needs no model,
no GPU and no DeepSpeed. Each says which buffers it counts, in which dtype, and what divides them.
Three precision regimes:

- ``fp32``: everything fp32 (``training.precision: fp32``).
- ``bf16``: DeepSpeed's bf16 mode as ``training/engine.py`` configures it: a bf16 copy of every
  parameter (scaling vectors included: DeepSpeed casts all of them), fp32 master weights and
  Adam moments, fp32 gradient accumulation at ZeRO-1.
- ``bf16-params``: every parameter stored and updated in bf16 with no fp32 master: DeepSpeed's
  ZeRO optimizer with ``bf16_master_weights_and_grads`` and ``bf16_optimizer_states`` (bf16
  master partitions, gradients and Adam moments; DeepSpeed casts every parameter, embedding
  tables and vectors included, to bf16). ZeRO 1-3 only: a ZeRO-0 config is planned at ZeRO-1.

Which DeepSpeed optimizer wrapper runs decides the buffers (`optimizer_wrapper` mirrors
``DeepSpeedEngine._do_optimizer_sanity_check`` for this project's engine config). The step's
memory peaks in one of three phases, and the plan takes the largest:

- forward/backward: resident state + activations and logits, or, once the logits are gone,
  the remaining activations + ZeRO-1/2's reduce bucket (+ the layer being recomputed, with
  activation checkpointing);
- end of backward: resident state + the gradients + the all-reduce's flattened copy;
- optimizer step: resident state + the gradients + the step's gradient copies and temporaries.

Activations are the tensors autograd keeps for the backward pass, counted from the real forward
(`layer_activation_bytes`). `fused=True` is the GPU forward: nGPT's ``torch.compile``d
normalizations (``model.compile_ngpt_ops``) and PyTorch's fused CUDA RMSNorm save less than
their eager versions, which is what runs on CPU (`fused=False`, the version checked by
``bench/bench_memory.py`` and the tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_ngpt.config import Config, ConfigError

REGIMES = ("fp32", "bf16", "bf16-params")
FP32 = 4
BF16 = 2
GiB = 2**30

# DeepSpeed defaults this project does not override (zero_optimization.reduce_bucket_size,
# stage3_max_live_parameters / stage3_max_reuse_distance; the engine's non-ZeRO all-reduce bucket,
# MEMORY_OPT_ALLREDUCE_SIZE).
REDUCE_BUCKET_ELEMENTS = 500_000_000
MAX_LIVE_PARAMETERS = 1_000_000_000
ALLREDUCE_BUCKET_ELEMENTS = 500_000_000
# CUDA context, NCCL buffers and allocator fragmentation: an allowance, not derived.
RUNTIME_RESERVE_BYTES = 2 * GiB

TORCH_ADAMW = "torch AdamW"
UNFUSED = "FP16_UnfusedOptimizer"
BF16_OPTIMIZER = "BF16_Optimizer"
ZERO_1_2 = "DeepSpeedZeroOptimizer"
ZERO_3 = "DeepSpeedZeroOptimizer_Stage3"
SHORT_NAMES = {TORCH_ADAMW: "AdamW", UNFUSED: "Unfused", BF16_OPTIMIZER: "BF16Opt",
               ZERO_1_2: "ZeRO-1/2", ZERO_3: "ZeRO-3"}


@dataclass(frozen=True)
class Layout:
    """How the world is split, and what one rank computes per micro-batch."""

    tp: int
    pp: int
    dp: int
    zero_stage: int
    micro_batch: int
    seq_length: int
    grad_accumulation: int
    activation_checkpointing: bool

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch (every TP rank sees all of them: no sequence parallelism)."""
        return self.micro_batch * self.seq_length


@dataclass(frozen=True)
class StageParams:
    """Parameter elements one rank holds on one pipeline stage, by how the regimes store them."""

    stage: int
    layers: int  # transformer layers on this stage
    matrices: int  # the layers' weight matrices (this TP shard)
    tables: int  # input embedding (first stage) and LM head (last stage) rows of this TP shard
    vectors: int  # nGPT scaling vectors, norm weights
    largest_tensor: int  # the largest single parameter (per-parameter optimizers' temporaries)

    @property
    def total(self) -> int:
        return self.matrices + self.tables + self.vectors


def layout_from_config(cfg: Config, world_size: int) -> Layout:
    """The layout of `cfg` on `world_size` GPUs; fails like the trainer on a bad batch split."""
    cfg.validate(world_size)
    p, t = cfg.parallel, cfg.training
    dp = world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size)
    return Layout(
        tp=p.tensor_model_parallel_size, pp=p.pipeline_model_parallel_size, dp=dp,
        zero_stage=p.zero_stage, micro_batch=t.micro_batch_size,
        seq_length=cfg.data.seq_length,
        grad_accumulation=t.global_batch_size // (t.micro_batch_size * dp),
        activation_checkpointing=p.activation_checkpointing,
    )


def default_world_size(cfg: Config) -> int:
    """One 8-GPU node (the sbatch scripts' default): the most GPUs up to 8 (or up to TP x PP,
    if larger) that hold whole TP x PP groups and split the global batch into micro-batches."""
    p, t = cfg.parallel, cfg.training
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    for world in range(max(8, model_parallel) // model_parallel * model_parallel, 0,
                       -model_parallel):
        if t.global_batch_size % (t.micro_batch_size * (world // model_parallel)) == 0:
            return world
    return model_parallel


# --- parameters -------------------------------------------------------------------------------

def _norm_params(cfg: Config) -> int:
    """Elements of one GPT-2 norm: RMSNorm has a weight, torch's LayerNorm a weight and a bias."""
    return cfg.model.hidden_size * (2 if cfg.model.normalization == "LayerNorm" else 1)


def stage_params(cfg: Config, vocab_size: int, tp: int, pp: int, stage: int) -> StageParams:
    """What one TP rank of pipeline stage `stage` holds (embedding first, LM head last)."""
    m = cfg.model
    h, f, v = m.hidden_size, m.ffn_hidden_size, -(-vocab_size // tp)
    layers = m.num_layers // pp
    # QKV [3h/TP, h], W_o [h, h/TP], fc1 [2f/TP, h], fc2 [h, f/TP].
    matrices = (4 * h * h + 3 * f * h) // tp
    if m.arch == "ngpt":  # alpha_A, alpha_M replicated; s_qk, s_u, s_v sharded like their outputs
        vectors = 2 * h + (h + 2 * f) // tp
    else:  # the two pre-norms
        vectors = 2 * _norm_params(cfg)
    tables = head_vectors = 0
    if stage == 0:
        tables += v * h
    if stage == pp - 1:
        tables += v * h
        head_vectors = v if m.arch == "ngpt" else _norm_params(cfg)  # s_z, or the final norm
    largest = max(v * h if tables else 0, 2 * f * h // tp)
    return StageParams(stage, layers, layers * matrices, tables,
                       layers * vectors + head_vectors, largest)


def weight_bytes_full(params: StageParams, regime: str) -> int:
    """The model's own parameters, unpartitioned, in each regime's storage dtype."""
    if regime == "fp32":
        return FP32 * params.total
    return BF16 * params.total


# --- which DeepSpeed optimizer runs -------------------------------------------------------------

def optimizer_wrapper(regime: str, layout: Layout) -> str:
    """DeepSpeed's choice for this project's engine config (``_do_optimizer_sanity_check``).

    bf16 at ZeRO-1 sets ``grad_accum_dtype: fp32`` and gets the BF16 optimizer; bf16 at ZeRO-0
    gets the unfused mixed-precision optimizer, or the BF16 optimizer (bf16 accumulation) in a
    pipeline. fp32 at ZeRO-0 is plain AdamW; ``bf16-params`` is always a ZeRO optimizer.
    """
    if layout.zero_stage == 3:
        return ZERO_3
    if regime == "bf16":
        if layout.zero_stage == 1 or (layout.zero_stage == 0 and layout.pp > 1):
            return BF16_OPTIMIZER
        return UNFUSED if layout.zero_stage == 0 else ZERO_1_2
    return TORCH_ADAMW if layout.zero_stage == 0 and regime == "fp32" else ZERO_1_2


def _partitioned(layout: Layout, wrapper: str) -> int:
    """DP size the optimizer partitions its master weights and Adam moments over."""
    return 1 if wrapper in (TORCH_ADAMW, UNFUSED) else layout.dp


def _grad_bytes(params: StageParams, regime: str) -> int:
    """One gradient per parameter in the model's dtype (what backward produces)."""
    return weight_bytes_full(params, regime)


def _master_bytes_full(params: StageParams, regime: str) -> int:
    """All parameters in the optimizer's dtype: fp32, or the parameters' own in bf16-params."""
    return weight_bytes_full(params, regime) if regime == "bf16-params" else FP32 * params.total


# --- the terms -------------------------------------------------------------------------------

def weights(params: StageParams, regime: str, layout: Layout) -> float:
    """The model's parameters: whole on every rank, or 1/DP of them under ZeRO-3."""
    full = weight_bytes_full(params, regime)
    return full / layout.dp if layout.zero_stage == 3 else full


def master_weights(params: StageParams, regime: str, layout: Layout) -> float:
    """The optimizer's own copy of the weights it updates.

    fp32 at ZeRO-0: none (AdamW updates the parameters). bf16 at ZeRO-0: a whole
    fp32 copy of every parameter (``FP16_UnfusedOptimizer.fp32_groups``). Every partitioning
    optimizer (BF16 optimizer, ZeRO-1/2/3) clones this rank's 1/DP slice of the flat parameters
    into its own flat tensor: fp32 in ``fp32``/``bf16``, the parameter dtype in ``bf16-params``
    (``single_partition_of_fp32_groups``, ``fp32_groups_flat_partition``,
    ``fp32_partitioned_groups_flat``).
    """
    wrapper = optimizer_wrapper(regime, layout)
    if wrapper == TORCH_ADAMW:
        return 0.0
    return _master_bytes_full(params, regime) / _partitioned(layout, wrapper)


def optimizer_states(params: StageParams, regime: str, layout: Layout) -> float:
    """Adam's two moments, in the master's dtype, over the slice this rank updates (1/DP from
    ZeRO-1 on; ZeRO-0's BF16 optimizer in a pipeline partitions too)."""
    wrapper = optimizer_wrapper(regime, layout)
    return 2 * _master_bytes_full(params, regime) / _partitioned(layout, wrapper)


def resident_gradients(params: StageParams, regime: str, layout: Layout) -> float:
    """Gradient buffers held for the whole run.

    BF16 optimizer: the accumulation buffer over all of the stage's parameters (fp32, or bf16
    at ZeRO-0 in a pipeline), not partitioned (``fp32_groups_gradients_flat``). ZeRO-3: this
    rank's 1/DP gradient partition in the model dtype (``grad_partitions_flat_buffer``).
    """
    wrapper = optimizer_wrapper(regime, layout)
    if wrapper == BF16_OPTIMIZER:
        return (FP32 if layout.zero_stage == 1 else BF16) * params.total
    if wrapper == ZERO_3:
        return _grad_bytes(params, regime) / layout.dp
    return 0.0


def backward_gradients(params: StageParams, regime: str, layout: Layout) -> float:
    """Gradients that backward creates and the step frees.

    Plain AdamW, the unfused and the BF16 optimizer: every parameter's ``.grad`` in the model
    dtype. ZeRO-1/2 (``DeepSpeedZeroOptimizer``): only this rank's 1/DP partition survives the
    reduction (``averaged_gradients`` / ``grads_in_partition``). ZeRO-3 keeps its partition
    resident (`resident_gradients`).
    """
    wrapper = optimizer_wrapper(regime, layout)
    if wrapper == ZERO_3:
        return 0.0
    grads = _grad_bytes(params, regime)
    return grads / layout.dp if wrapper == ZERO_1_2 else grads


def reduce_bucket(params: StageParams, regime: str, layout: Layout) -> float:
    """ZeRO's contiguous gradient bucket: ``reduce_bucket_size`` elements in the communication
    (model) dtype, whatever the model's size. ZeRO-1/2 allocate it at the first gradient hook of
    every backward pass (while the activations are alive); ZeRO-3 holds it for the whole run."""
    wrapper = optimizer_wrapper(regime, layout)
    if wrapper not in (ZERO_1_2, ZERO_3):
        return 0.0
    return REDUCE_BUCKET_ELEMENTS * (FP32 if regime == "fp32" else BF16)


def reduce_copy(params: StageParams, regime: str, layout: Layout) -> float:
    """The engine's data-parallel all-reduce of unpartitioned gradients (``allreduce_bucket``)
    packs gradients into buckets until one exceeds 500M elements and flattens every bucket of
    two or more tensors into a new one: a copy of at most one bucket, at the end of backward.
    The BF16 optimizer hands over one flat buffer per parameter group, copied only when all
    groups fit one bucket. ZeRO-1/2/3 reduce through their own bucket instead."""
    wrapper = optimizer_wrapper(regime, layout)
    if wrapper in (ZERO_1_2, ZERO_3):
        return 0.0
    if wrapper == BF16_OPTIMIZER:
        copied = params.total if params.total <= ALLREDUCE_BUCKET_ELEMENTS else 0
        return resident_gradients(params, regime, layout) / params.total * copied
    copied = min(params.total, ALLREDUCE_BUCKET_ELEMENTS + params.largest_tensor)
    return _grad_bytes(params, regime) / params.total * copied


def step_temporaries(params: StageParams, regime: str, layout: Layout) -> float:
    """Memory the optimizer step allocates and frees.

    Gradient copies: ZeRO-1/2/3 flatten this rank's gradient partition into a master-dtype
    tensor (1/DP); the unfused optimizer makes an fp32 copy of every gradient. Then AdamW's
    ``exp_avg_sq.sqrt() / bias_correction`` holds two temporaries of the tensor it updates: the
    flat partition (1/DP) for the partitioning optimizers, the largest parameter for the others.
    """
    wrapper = optimizer_wrapper(regime, layout)
    if wrapper in (TORCH_ADAMW, UNFUSED):
        # The largest tensor is an fp32 parameter or an fp32 copy of one.
        copies = FP32 * params.total if wrapper == UNFUSED else 0.0
        return copies + 2 * FP32 * params.largest_tensor
    partition = _master_bytes_full(params, regime) / layout.dp
    copies = partition if wrapper in (ZERO_1_2, ZERO_3) else 0.0
    return copies + 2 * partition


def zero3_gathered(params: StageParams, regime: str, layout: Layout) -> float:
    """ZeRO-3 gathers every parameter whole into a buffer of its own for compute, and with
    DeepSpeed's defaults (``stage3_max_live_parameters`` and ``stage3_max_reuse_distance``,
    1e9 elements) keeps up to 1e9 gathered elements alive through forward and backward: the
    whole stage at these model sizes. On one rank the partition is the parameter: nothing to
    gather."""
    if layout.zero_stage != 3 or layout.dp == 1:
        return 0.0
    per_element = weight_bytes_full(params, regime) / params.total
    return per_element * min(params.total, MAX_LIVE_PARAMETERS)


# --- activations -----------------------------------------------------------------------------

def activation_dtype_bytes(regime: str) -> int:
    return FP32 if regime == "fp32" else BF16


def head_dtype_bytes(regime: str) -> int:
    """The LM head computes in its weight's dtype."""
    return FP32 if regime == "fp32" else BF16


def _pre_norm_bytes_per_token(h: int, p: int, fused: bool, normalization: str) -> int:
    """One pre-norm's saved tensors per token, its output (the next matmul's input) included.

    torch's RMSNorm on CPU keeps its input in fp32 (a copy for bf16) and the fp32 normalized
    tensor; the fused CUDA kernel keeps the input and the inverse RMS. LayerNorm keeps its
    input and mean / inverse std.
    """
    if normalization == "LayerNorm":
        return p * h + 2 * FP32 + p * h
    if fused:
        return p * h + FP32 + p * h
    return FP32 * h + FP32 + FP32 * h + p * h


def layer_activation_bytes(cfg: Config, layout: Layout, regime: str, fused: bool) -> float:
    """Bytes one transformer layer keeps for backward, for one micro-batch on one TP rank.

    Per token, ``p`` the activation dtype's bytes, ``h`` hidden, ``f`` FFN, ``a`` heads (the
    attention and FFN terms split over TP; SDPA/flash attention keeps no s x s matrix):

    - both: fused QKV output ``3ph`` (SDPA keeps v, a view of it), SDPA's output ``ph`` (also
      W_o's input) and its fp32 log-sum-exp ``4a``; RoPE's cos/sin tables ``4 s d_head p`` per
      layer.
    - GPT-2: the two pre-norms (`_pre_norm_bytes_per_token`), the RoPE'd q, k ``2ph``; SwiGLU
      keeps fc1's ``[gate|up]`` ``2pf``, ``up + 0``, ``silu(gate)`` and their product: ``5pf``.
    - nGPT: the layer input ``ph`` and the MLP input ``ph``; q, k after ``s_qk`` ``2ph`` (SDPA's
      inputs); SwiGLU with ``s_u``, ``s_v``: ``[u|v]`` ``2pf``, scaled u and v, ``silu(v)``, the
      product: ``6pf``. Eager (CPU): each of the 2 q/k and 4 residual normalizations keeps its
      input in fp32 (``4h``, a copy when p = 2) and sum / inverse norm (8 bytes per row), q and k
      also unit before ``s_qk`` (``2ph``), each residual update ``norm(x) - h`` (``ph``).
      Compiled (GPU, ``compile_ngpt_ops``; ``compile_layers`` is taken to save the same): only
      the RoPE'd q, k ``2ph``, the block outputs W_o / W_down ``2ph`` and the norms.
    """
    m = cfg.model
    h, f, a, p = m.hidden_size, m.ffn_hidden_size // layout.tp, m.num_attention_heads, \
        activation_dtype_bytes(regime)
    heads = a // layout.tp
    attn = h // layout.tp  # q, k, v, attention output widths on this TP rank
    per_token = 3 * p * attn + p * attn + FP32 * heads  # QKV, SDPA output, log-sum-exp
    if m.arch == "gpt2":
        per_token += 2 * _pre_norm_bytes_per_token(h, p, fused, m.normalization)
        per_token += 2 * p * attn + 5 * p * f
    else:
        per_token += 2 * p * h + 2 * p * attn + 6 * p * f
        if fused and (m.compile_ngpt_ops or m.compile_layers):
            per_token += 2 * p * attn + 2 * FP32 * heads  # q, k with their norms
            per_token += 2 * (p * h + 2 * FP32)  # W_o / W_down output with its two norms
        else:
            per_token += 2 * (FP32 * attn + p * attn + 2 * FP32 * heads)  # q and k
            per_token += 2 * (FP32 * h + p * h + FP32 * h + 4 * FP32)  # the residual updates
    rope = 4 * layout.seq_length * m.head_dim * p
    return per_token * layout.tokens + rope


def checkpointed_layer_bytes(cfg: Config, layout: Layout, regime: str) -> float:
    """With activation checkpointing a layer keeps only its input ``[s, b, h]``."""
    return activation_dtype_bytes(regime) * cfg.model.hidden_size * layout.tokens


def head_activation_bytes(cfg: Config, layout: Layout, regime: str, fused: bool,
                          vocab_size: int) -> float:
    """What the output stage keeps for backward: the batch-first copy of the hidden states
    (the LM head's input; GPT-2 adds its final norm), the loss's fp32 softmax ``[b, s, V/TP]``
    (the vocab-parallel cross entropy works in place on the fp32 copy of the logits) with its
    target mask and targets (9 bytes per token). nGPT also keeps its ``s_z``-scaled head weight
    ``[V/TP, h]``, the fp32 weight that ``s_z`` multiplied (a copy unless the weight is fp32),
    and ``s_z``."""
    m = cfg.model
    p, q = activation_dtype_bytes(regime), head_dtype_bytes(regime)
    v = -(-vocab_size // layout.tp)
    per_token = q * m.hidden_size + FP32 * v + 9
    if m.arch == "gpt2":
        per_token += _pre_norm_bytes_per_token(m.hidden_size, p, fused, m.normalization) \
            - p * m.hidden_size  # the norm's output is the copy's input, not kept
        return per_token * layout.tokens
    scaled_head = q * v * m.hidden_size + (FP32 * v * m.hidden_size if q < FP32 else 0) + FP32 * v
    return per_token * layout.tokens + scaled_head


def logits_transient_bytes(cfg: Config, layout: Layout, regime: str, vocab_size: int) -> float:
    """The logits in the head's dtype, alive with their fp32 copy until the forward returns
    (the copy itself is counted in `head_activation_bytes`)."""
    return head_dtype_bytes(regime) * -(-vocab_size // layout.tp) * layout.tokens


def logits_and_loss_bytes(cfg: Config, layout: Layout, regime: str, vocab_size: int,
                          stage: int) -> float:
    """The logits and the loss's fp32 softmax: gone by the time the first parameter gradient
    (the LM head's) is ready, which is when ZeRO-1/2 allocate their reduce bucket."""
    if stage != layout.pp - 1:
        return 0.0
    softmax = FP32 * -(-vocab_size // layout.tp) * layout.tokens
    return softmax + logits_transient_bytes(cfg, layout, regime, vocab_size)


def micro_batches_in_flight(layout: Layout, stage: int) -> int:
    """Forward passes a stage runs before its first backward: 1 without a pipeline,
    ``PP - stage`` in DeepSpeed's 1F1B schedule (at most the accumulation steps)."""
    return min(layout.pp - stage, layout.grad_accumulation) if layout.pp > 1 else 1


def pipe_buffers(cfg: Config, layout: Layout, regime: str, stage: int) -> float:
    """DeepSpeed's pipeline keeps each in-flight micro-batch's stage input and output."""
    if layout.pp == 1:
        return 0.0
    buffers = max(2, micro_batches_in_flight(layout, stage))
    return buffers * 2 * activation_dtype_bytes(regime) * cfg.model.hidden_size * layout.tokens


def activations(cfg: Config, layout: Layout, regime: str, params: StageParams, fused: bool,
                vocab_size: int, checkpointing: bool) -> float:
    """What the forward pass adds on one stage: the layers' saved tensors for every micro-batch
    in flight (with checkpointing: their inputs), the output stage's, the transient logits, and
    the pipeline's buffers."""
    if checkpointing:
        kept = checkpointed_layer_bytes(cfg, layout, regime)
    else:
        kept = layer_activation_bytes(cfg, layout, regime, fused)
    total = micro_batches_in_flight(layout, params.stage) * params.layers * kept
    if params.stage == layout.pp - 1:
        total += head_activation_bytes(cfg, layout, regime, fused, vocab_size)
        total += logits_transient_bytes(cfg, layout, regime, vocab_size)
    return total + pipe_buffers(cfg, layout, regime, params.stage)


def kept_for_backward(run: Callable[[], object], params: list[torch.Tensor]) -> int:
    """Measured, for checking the activation terms: bytes of the distinct storages autograd
    saves for backward while `run()` executes, the storages of `params` aside."""
    weights = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(saved.values())


# --- the plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryPlan:
    """One regime's terms on the stage that needs the most memory, in bytes."""

    regime: str
    wrapper: str
    stage: int
    weights: float
    master_weights: float
    optimizer_states: float
    resident_gradients: float
    backward_gradients: float
    reduce_bucket: float
    reduce_copy: float
    step_temporaries: float
    zero3_gathered: float
    activations: float
    activations_checkpointed: float
    recomputed_layer: float
    logits_and_loss: float

    @property
    def resident(self) -> float:
        """Held through the whole step (ZeRO-3's bucket stays allocated)."""
        bucket = self.reduce_bucket if self.wrapper == ZERO_3 else 0.0
        return (self.weights + self.master_weights + self.optimizer_states
                + self.resident_gradients + bucket)

    def forward_backward(self, checkpointing: bool = False) -> float:
        """Above the resident memory: the end of forward (activations and logits), or backward
        once the logits and the loss are gone: ZeRO-1/2's reduce bucket appears with the first
        gradient, and with checkpointing each layer is recomputed in turn."""
        acts = self.activations_checkpointed if checkpointing else self.activations
        later = self.reduce_bucket if self.wrapper == ZERO_1_2 else 0.0
        if checkpointing:
            later += self.recomputed_layer
        return max(acts, acts - self.logits_and_loss + later) + self.zero3_gathered

    def peak(self, checkpointing: bool = False) -> float:
        """The largest of the three phases (forward/backward, end of backward, step)."""
        forward_backward = self.resident + self.forward_backward(checkpointing)
        end_of_backward = self.resident + self.backward_gradients + self.reduce_copy
        step = self.resident + self.backward_gradients + self.step_temporaries
        return max(forward_backward, end_of_backward, step)


def plan_stage(cfg: Config, vocab_size: int, layout: Layout, regime: str, stage: int,
               fused: bool = True) -> MemoryPlan:
    params = stage_params(cfg, vocab_size, layout.tp, layout.pp, stage)
    args = (params, regime, layout)
    return MemoryPlan(
        regime=regime, wrapper=optimizer_wrapper(regime, layout), stage=stage,
        weights=weights(*args), master_weights=master_weights(*args),
        optimizer_states=optimizer_states(*args), resident_gradients=resident_gradients(*args),
        backward_gradients=backward_gradients(*args), reduce_bucket=reduce_bucket(*args),
        reduce_copy=reduce_copy(*args), step_temporaries=step_temporaries(*args),
        zero3_gathered=zero3_gathered(*args),
        activations=activations(cfg, layout, regime, params, fused, vocab_size, False),
        activations_checkpointed=activations(cfg, layout, regime, params, fused, vocab_size,
                                             True),
        recomputed_layer=layer_activation_bytes(cfg, layout, regime, fused) if params.layers
        else 0.0,
        logits_and_loss=logits_and_loss_bytes(cfg, layout, regime, vocab_size, stage),
    )


def plan(cfg: Config, vocab_size: int, layout: Layout, regime: str,
         fused: bool = True) -> MemoryPlan:
    """The plan of the pipeline stage with the highest peak (the config's own checkpointing)."""
    if regime not in REGIMES:
        raise ConfigError(f"precision regime {regime!r} is not one of {', '.join(REGIMES)}")
    if regime == "bf16-params" and layout.zero_stage == 0:  # DeepSpeed needs its ZeRO optimizer
        layout = dataclasses.replace(layout, zero_stage=1)
    stages = (plan_stage(cfg, vocab_size, layout, regime, s, fused) for s in range(layout.pp))
    return max(stages, key=lambda p: p.peak(layout.activation_checkpointing))


ROWS = (
    ("weights", "weights"),
    ("master weights", "master_weights"),
    ("optimizer states (Adam)", "optimizer_states"),
    ("gradients, resident", "resident_gradients"),
    ("gradients, backward to step", "backward_gradients"),
    ("ZeRO reduce bucket", "reduce_bucket"),
    ("all-reduce copy (end of backward)", "reduce_copy"),
    ("optimizer step temporaries", "step_temporaries"),
    ("ZeRO-3 gathered parameters", "zero3_gathered"),
    ("activations + logits, per micro-batch", "activations"),
    ("  of which logits and loss", "logits_and_loss"),
    ("  with activation checkpointing", "activations_checkpointed"),
    ("  + one layer recomputed in backward", "recomputed_layer"),
)


def format_plan(cfg: Config, layout: Layout, plans: list[MemoryPlan], gpu_memory_gib: float) -> str:
    """A table: one column per regime (the config's marked ``*``), terms, peaks and the verdict."""
    own = cfg.training.precision
    names = [p.regime + ("*" if p.regime == own else "") for p in plans]
    width = 38
    lines = [
        f"Memory per GPU: TP {layout.tp} x PP {layout.pp} x DP {layout.dp} = "
        f"{layout.tp * layout.pp * layout.dp} GPUs, ZeRO-{layout.zero_stage}, micro-batch "
        f"{layout.micro_batch} x {layout.seq_length} tokens, {gpu_memory_gib:g} GiB per GPU "
        f"(GiB; * = the config's precision)",
        f"{'':<{width}}" + "".join(f"{n:>13}" for n in names),
    ]
    if layout.zero_stage == 0 and "bf16-params" in [p.regime for p in plans]:
        lines.insert(1, "(bf16-params needs DeepSpeed's ZeRO optimizer: its column is ZeRO-1)")

    def row(label: str, values) -> None:
        lines.append(f"{label:<{width}}" + "".join(f"{v:>13}" for v in values))

    for label, field in ROWS:
        row(label, [f"{getattr(p, field) / GiB:.2f}" for p in plans])
    if layout.pp > 1:
        row("pipeline stage with the highest peak", [str(p.stage) for p in plans])
    row("runtime reserve (CUDA, NCCL)", [f"{RUNTIME_RESERVE_BYTES / GiB:.2f}"] * len(plans))
    budget = gpu_memory_gib * GiB - RUNTIME_RESERVE_BYTES
    for label, ckpt in (("peak", False), ("peak with activation checkpointing", True)):
        row(label, [f"{p.peak(ckpt) / GiB:.2f}" for p in plans])
        row(f"  fits {gpu_memory_gib:g} GiB", ["yes" if p.peak(ckpt) <= budget else "no"
                                                for p in plans])
    row("DeepSpeed optimizer", [SHORT_NAMES[p.wrapper] for p in plans])
    return "\n".join(lines)

