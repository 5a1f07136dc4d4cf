"""The one configuration system: typed dataclasses, loaded from YAML, overridden by `key=value`.

A run is described by a :class:`Config` with six sections (model, parallel, data, optimizer,
training, logging). YAML files (``configs/``, shipped inside the package as
``megatron_ngpt/configs``) give values section by section; overrides use dotted keys
(``model.hidden_size=128``) and are parsed as YAML scalars, except for text fields, which take the
text as it is. Unknown keys, values of the wrong type and inconsistent combinations fail with a
:class:`ConfigError` that names the field. Quantities derived from several fields (steps, tokens
per step) are methods of :class:`Config`, so every consumer computes them the same way.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or inconsistent; the message names the field."""


@dataclass
class ModelConfig:
    arch: str = "ngpt"  # "ngpt" or "gpt2"
    num_layers: int = 24
    hidden_size: int = 1024
    num_attention_heads: int = 16
    ffn_hidden_size: int = 4096
    # 0 means "from the tokenizer", padded to a multiple of make_vocab_size_divisible_by x TP.
    vocab_size: int = 0
    make_vocab_size_divisible_by: int = 128
    rotary_base: int = 10000
    normalization: str = "RMSNorm"  # GPT-2 only: "RMSNorm" or "LayerNorm"
    layernorm_epsilon: float = 1e-5
    init_std: float | None = None  # None: 1/sqrt(hidden_size)
    # nGPT only: NVIDIA's reference code also scales u by sqrt(d); the paper scales only v.
    ngpt_scale_u_by_sqrt_d: bool = False
    transformer_impl: str = "local"  # "local" or "transformer_engine"
    # nGPT: fused normalizations on CUDA (Triton kernels, else torch.compile; models/fused.py)
    compile_ngpt_ops: bool = True
    compile_layers: bool = False  # torch.compile every transformer layer (for GPUs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def init_std_value(self) -> float:
        return self.init_std if self.init_std is not None else 1.0 / math.sqrt(self.hidden_size)


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    zero_stage: int = 1
    activation_checkpointing: bool = False


@dataclass
class DataConfig:
    # Blend: ["0.3", "prefix_a", "0.7", "prefix_b"] or just ["prefix"]; split by `split`.
    data_path: list[str] = field(default_factory=list)
    split: str = "969,30,1"
    # Separate per-split blends; when any is set, data_path/split are not used.
    train_data_path: list[str] = field(default_factory=list)
    valid_data_path: list[str] = field(default_factory=list)
    test_data_path: list[str] = field(default_factory=list)
    seq_length: int = 1024
    tokenizer_model: str = ""
    cache_dir: str = ""  # default: <run dir>/data_cache
    num_workers: int = 0
    # Build the training split for this many samples (0: what the run consumes). The order of
    # the samples depends on this number once the data repeats, so runs that must see the same
    # order (a WSD stable run and its cooldown branches) set the same value.
    train_dataset_samples: int = 0
    # Attend only within each document of a packed sequence, RoPE positions restarting at every
    # document (Megatron-LM's reset_attention_mask + reset_position_ids); docs/training.md.
    document_attention: bool = False


@dataclass
class OptimizerConfig:
    lr: float = 1.5e-3
    min_lr: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 0
    lr_decay_style: str = "cosine"  # "cosine", "linear", "constant" or "wsd"
    # wsd (warmup-stable-decay): the peak rate until the last `decay_fraction` of the run, then
    # a decay of `decay_shape` ("linear", "1-sqrt" or "cosine") to min_lr.
    decay_fraction: float = 0.2
    decay_shape: str = "1-sqrt"


@dataclass
class TrainingConfig:
    micro_batch_size: int = 4
    global_batch_size: int = 512
    train_iters: int = 0
    train_tokens: int = 0  # token budget; used when train_iters is 0
    # "fp32": everything fp32. "bf16": bf16 model, fp32 masters, Adam states and gradient
    # accumulation. "bf16-params": parameters stored and updated in bf16, no fp32 master copy,
    # bf16 Adam states (the nGPT paper's setting; ZeRO 1-3). See docs/training.md.
    precision: str = "bf16"
    seed: int = 1234
    device: str = "auto"  # "auto", "cpu" or "cuda"
    save: str = ""  # run directory
    save_interval: int = 1000
    keep_last: int = 3
    # Also save at these steps, into RUN_DIR/kept/ where no checkpoint is ever pruned (a WSD
    # stable run keeps the start of every cooldown branch).
    keep_steps: list[int] = field(default_factory=list)
    # Start from this run directory's checkpoint (the newest, or `load_step`) unless the run
    # directory has checkpoints of its own: a branch that was stopped resumes itself.
    load: str = ""
    load_step: int = 0  # with `load`: that step's checkpoint (kept or not); 0: the newest
    exit_interval: int = 0
    eval_interval: int = 1000
    eval_iters: int = 10
    # Stop (status 4, nothing saved) after this many steps in a row that DeepSpeed skipped for
    # gradient overflow; 0 never stops.
    max_skipped_steps: int = 10
    # Resume through the layout-independent fp32 files only: DeepSpeed's loader unpickles its
    # shards, which can run code, so a checkpoint from elsewhere is loaded this way.
    load_fp32_only: bool = False
    # Start from step 0 even though RUN_DIR holds checkpoints (they are overwritten as the new
    # run saves). Without it, a run directory whose checkpoints are all unusable is an error.
    ignore_checkpoints: bool = False
    # lm-eval on the in-memory model every N steps and at the end (0: off; docs/training.md):
    # task names, lm-eval groups or "seed" (the paper's five), documents per task (0: all), and a
    # folder of task YAMLs searched besides the packaged megatron_ngpt/eval/tasks.
    downstream_eval_interval: int = 0
    downstream_tasks: list[str] = field(default_factory=lambda: ["seed"])
    downstream_limit: int = 0
    downstream_include_path: str = ""


@dataclass
class LoggingConfig:
    log_interval: int = 10
    wandb: bool = False
    wandb_project: str = "megatron-ngpt"
    wandb_run_name: str = ""
    # Per-device dense bf16 peak for MFU; 0: from the GPU's name (megatron_ngpt/hardware.py).
    peak_tflops: float = 989.0
    progress_bar: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, world_size: int | None = None) -> Config:
        """Check consistency; with `world_size`, also the data-parallel batch arithmetic."""
        _validate(self, world_size)
        return self

    def validate_for_training(self, world_size: int | None = None) -> Config:
        """`validate`, plus what a training run needs beyond a model: a run directory, a
        tokenizer and a length."""
        self.validate(world_size)
        if not self.training.save:
            raise ConfigError("training.save: set the run directory (--save RUN_DIR)")
        if not self.data.tokenizer_model:
            raise ConfigError("data.tokenizer_model: set --tokenizer-model PATH")
        self.total_steps()
        return self

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step: global batch x sequence length."""
        return self.training.global_batch_size * self.data.seq_length

    def model_vocab_size(self, tokenizer_vocab_size: int, tensor_parallel_size: int) -> int:
        """`model.vocab_size`, or the tokenizer's padded like Megatron (a multiple of
        `make_vocab_size_divisible_by` x TP); never smaller than the tokenizer's."""
        m = self.model
        vocab = m.vocab_size or padded_vocab_size(tokenizer_vocab_size,
                                                  m.make_vocab_size_divisible_by,
                                                  tensor_parallel_size)
        if vocab < tokenizer_vocab_size:
            raise ConfigError(f"model.vocab_size: {vocab} is smaller than the tokenizer's "
                              f"{tokenizer_vocab_size}")
        return vocab

    def total_steps(self) -> int:
        """Optimizer steps of the run: `train_iters`, or the token budget in whole steps."""
        t = self.training
        if t.train_iters:
            return t.train_iters
        if t.train_tokens:
            return max(1, -(-t.train_tokens // self.tokens_per_step))
        raise ConfigError("training.train_iters: set train_iters or train_tokens (a token budget)")


_CHOICES = {
    "model.arch": ("ngpt", "gpt2"),
    "model.normalization": ("RMSNorm", "LayerNorm"),
    "model.transformer_impl": ("local", "transformer_engine"),
    "training.precision": ("fp32", "bf16", "bf16-params"),
    "training.device": ("auto", "cpu", "cuda"),
    "optimizer.lr_decay_style": ("cosine", "linear", "constant", "wsd"),
    "optimizer.decay_shape": ("linear", "1-sqrt", "cosine"),
}


_AT_LEAST_ONE = (
    "model.num_layers", "model.hidden_size", "model.num_attention_heads", "model.ffn_hidden_size",
    "model.make_vocab_size_divisible_by", "parallel.tensor_model_parallel_size",
    "parallel.pipeline_model_parallel_size", "data.seq_length", "training.micro_batch_size",
    "training.global_batch_size", "training.keep_last", "logging.log_interval",
)
_NOT_NEGATIVE = (
    "model.vocab_size", "data.num_workers", "optimizer.min_lr", "optimizer.weight_decay",
    "optimizer.clip_grad", "optimizer.warmup_steps", "training.train_iters",
    "training.train_tokens", "training.save_interval", "training.exit_interval",
    "training.eval_interval", "training.eval_iters", "training.max_skipped_steps",
    "training.load_step", "data.train_dataset_samples",
    "training.downstream_eval_interval", "training.downstream_limit",
)


def _fail(key: str, reason: str) -> None:
    raise ConfigError(f"{key}: {reason}")


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _validate(cfg: Config, world_size: int | None) -> None:
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            _fail(key, f"{value!r} is not one of {', '.join(choices)}")
    m, p, t = cfg.model, cfg.parallel, cfg.training
    for key in _AT_LEAST_ONE:
        if _get(cfg, key) < 1:
            _fail(key, "must be at least 1")
    for key in _NOT_NEGATIVE:
        value = _get(cfg, key)
        if not value >= 0:  # also catches NaN
            _fail(key, f"must not be negative, got {value}")
    for key in ("optimizer.lr", "optimizer.min_lr", "optimizer.clip_grad"):
        if not math.isfinite(_get(cfg, key)):
            _fail(key, f"must be a finite number, got {_get(cfg, key)}")
    if not cfg.optimizer.lr > 0:
        _fail("optimizer.lr", f"must be positive, got {cfg.optimizer.lr}")
    if m.hidden_size % m.num_attention_heads:
        _fail("model.num_attention_heads",
              f"hidden_size {m.hidden_size} is not divisible by {m.num_attention_heads} heads")
    if m.head_dim % 2:
        _fail("model.num_attention_heads", f"head dim {m.head_dim} must be even for RoPE")
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if m.num_attention_heads % tp:
        _fail("parallel.tensor_model_parallel_size",
              f"{m.num_attention_heads} attention heads are not divisible by TP={tp}")
    if m.ffn_hidden_size % tp:
        _fail("parallel.tensor_model_parallel_size",
              f"ffn_hidden_size {m.ffn_hidden_size} is not divisible by TP={tp}")
    if m.num_layers % pp:
        _fail("parallel.pipeline_model_parallel_size",
              f"{m.num_layers} layers are not divisible by PP={pp}")
    if p.zero_stage not in (0, 1, 2, 3):
        _fail("parallel.zero_stage", f"{p.zero_stage} is not one of 0, 1, 2, 3")
    if pp > 1 and p.zero_stage > 1:
        _fail("parallel.zero_stage",
              f"ZeRO-{p.zero_stage} is incompatible with pipeline parallelism (PP={pp}) in "
              "DeepSpeed's pipeline engine; use zero_stage 0 or 1")
    if t.precision == "bf16-params" and p.zero_stage == 0:
        _fail("training.precision",
              "bf16-params keeps its bf16 master weights in DeepSpeed's ZeRO optimizer: use "
              "parallel.zero_stage 1, 2 or 3")
    if cfg.model.compile_layers and p.zero_stage == 3:
        _fail("model.compile_layers",
              "not supported with ZeRO-3, whose parameter hooks make torch.compile recompile "
              "every layer; use parallel.zero_stage 0, 1 or 2")
    if not 0 < cfg.optimizer.decay_fraction <= 1:
        _fail("optimizer.decay_fraction", f"must be in (0, 1], got {cfg.optimizer.decay_fraction}")
    if any(step < 1 for step in t.keep_steps):
        _fail("training.keep_steps", f"steps must be at least 1, got {t.keep_steps}")
    if t.load_step and not t.load:
        _fail("training.load_step", "needs training.load (the run directory to start from)")
    if cfg.data.document_attention and m.transformer_impl == "transformer_engine":
        _fail("data.document_attention", "not supported with model.transformer_impl="
              "transformer_engine yet; use model.transformer_impl=local (flex_attention on GPU)")
    if t.downstream_eval_interval and not any(name.strip(" ,") for name in t.downstream_tasks):
        _fail("training.downstream_tasks", "no tasks given for the in-loop evaluation")
    if cfg.optimizer.min_lr > cfg.optimizer.lr:
        _fail("optimizer.min_lr", f"{cfg.optimizer.min_lr} exceeds the peak lr {cfg.optimizer.lr}")
    if len(cfg.data.data_path) > 1 and len(cfg.data.data_path) % 2:
        _fail("data.data_path", "a blend must be pairs of 'weight prefix'")
    split = cfg.data.split.replace("/", ",").split(",")
    try:
        weights = [float(s) for s in split]
        if not 1 <= len(split) <= 3 or sum(weights) <= 0 or not all(w >= 0 for w in weights):
            raise ValueError
    except ValueError:
        _fail("data.split", f"{cfg.data.split!r} is not like '969,30,1' (non-negative weights)")
    if world_size is not None:
        if world_size % (tp * pp):
            _fail("parallel.tensor_model_parallel_size",
                  f"world size {world_size} is not divisible by TP x PP = {tp * pp}")
        dp = world_size // (tp * pp)
        if t.global_batch_size % (t.micro_batch_size * dp):
            _fail("training.global_batch_size",
                  f"{t.global_batch_size} is not divisible by micro_batch_size x DP = "
                  f"{t.micro_batch_size} x {dp}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a dataclass field annotation (after PEP 563 resolution)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is list:
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list):
            _fail(key, f"expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(key, v, item_type) for v in value]
    if annotation is bool:
        if not isinstance(value, bool):
            _fail(key, f"expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            _fail(key, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                _fail(key, f"expected a number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            _fail(key, f"expected a string, got {value!r}")
        return value
    return value


def _field_type(cfg: Config, key: str) -> Any:
    """The annotation of the field `key` ("section.name"), or ConfigError naming what is wrong."""
    parts = key.split(".")
    if len(parts) != 2:
        _fail(key, "keys look like 'section.name' (e.g. model.hidden_size)")
    section_name, name = parts
    section = getattr(cfg, section_name, None)
    if section is None or not dataclasses.is_dataclass(section):
        sections = ", ".join(f.name for f in dataclasses.fields(Config))
        _fail(key, f"unknown section {section_name!r} (sections: {sections})")
    hints = typing.get_type_hints(type(section))
    if name not in hints:
        _fail(key, f"unknown key {name!r} in section {section_name!r}")
    return hints[name]


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set one field from a Python value, checked against the field's type."""
    annotation = _field_type(cfg, key)
    section_name, name = key.split(".")
    setattr(getattr(cfg, section_name), name, _coerce(key, value, annotation))


def parse_value(cfg: Config, key: str, raw: str) -> Any:
    """A command-line value for `key`: text fields take it as it is (a path named `yes` stays a
    path), lists split on whitespace unless written in YAML's brackets, the rest is YAML."""
    annotation = _field_type(cfg, key)
    if annotation is str:
        return raw
    if typing.get_origin(annotation) is list and raw.strip()[:1] not in ("[", "{"):
        return raw.split()
    return yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings in order (the last value of a key wins)."""
    for item in overrides:
        if "=" not in item:
            _fail(item, "an override must look like section.key=value")
        key, raw = (part.strip() for part in item.split("=", 1))
        set_value(cfg, key, parse_value(cfg, key, raw))
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    cfg = Config()
    for section_name, values in (data or {}).items():
        if values is None:
            continue
        if not isinstance(values, dict):
            _fail(f"{source}: {section_name}", "a section must be a mapping")
        for name, value in values.items():
            set_value(cfg, f"{section_name}.{name}", value)
    return cfg


def packaged_configs() -> Path:
    """The configs shipped inside the package (the checkout's ``configs/`` links here)."""
    return Path(__file__).resolve().parent / "configs"


def resolve_config_path(name: str | Path) -> Path:
    """A config file by path, or by its name among the packaged ones (``tiny/ngpt``,
    ``configs/ngpt_0.5b_1k.yaml``), so that a plain ``pip install`` finds them too."""
    path = Path(name)
    if path.is_file():
        return path
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    for candidate in (relative, relative.with_name(relative.name + ".yaml")):
        packaged = packaged_configs() / candidate
        if not path.is_absolute() and packaged.is_file():
            return packaged
    known = ", ".join(str(p.relative_to(packaged_configs()).with_suffix(""))
                      for p in sorted(packaged_configs().rglob("*.yaml")))
    raise ConfigError(f"{name}: config file not found (packaged configs: {known})")


def read_config(path: str | Path | None) -> Config:
    """The config of a YAML file (the defaults when `path` is None), not yet validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return config_from_dict(data, str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (or the defaults when `path` is None), apply overrides, validate."""
    return apply_overrides(read_config(path), overrides or []).validate()


def padded_vocab_size(vocab_size: int, divisible_by: int, tensor_parallel_size: int) -> int:
    """Megatron's --make-vocab-size-divisible-by padding (multiple of divisible_by x TP)."""
    multiple = divisible_by * tensor_parallel_size
    return ((vocab_size + multiple - 1) // multiple) * multiple
