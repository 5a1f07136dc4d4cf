"""Export a TP=1 `LanguageModel` state dict as a Hugging Face model folder.

GPT-2 (RMSNorm) becomes a stock `LlamaForCausalLM`; GPT-2 with LayerNorm a stock
`StableLmForCausalLM` (pre-LayerNorm with bias, SwiGLU, full half-split RoPE, no linear biases,
untied: exactly our baseline once `partial_rotary_factor=1`); nGPT becomes `NGPTForCausalLM`,
whose two source files are copied into the folder and named in `auto_map`, so
``trust_remote_code=True`` loads it without this package. Weights are safetensors.

The folder is built in a temporary sibling and renamed at the end: a failed export leaves
nothing behind, and `overwrite` replaces an existing folder only once the new one is complete,
and only when that folder is recognisably an earlier export (never a training run or anything
else). Files are world-readable (0644), like everything else a run writes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, StableLmConfig

from megatron_ngpt.config import Config
from megatron_ngpt.hf import configuration_ngpt, modeling_ngpt
from megatron_ngpt.hf.configuration_ngpt import NGPTConfig
from megatron_ngpt.hf.state_dict_adapter import to_hf_state_dict
from megatron_ngpt.hf.tokenizer_export import export_tokenizer

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
EXPORT_INFO = "export_info.json"  # written into every export: what it came from
NGPT_AUTO_MAP = {
    "AutoConfig": "configuration_ngpt.NGPTConfig",
    "AutoModelForCausalLM": "modeling_ngpt.NGPTForCausalLM",
}


class ExportError(ValueError):
    """The export cannot be written (occupied output folder, unknown dtype, vocab mismatch)."""


def hf_config(config: Config, vocab_size: int, bos_id: int, eos_id: int) -> PretrainedConfig:
    """The Hugging Face config describing the same network as `config.model`."""
    m = config.model
    common = dict(
        vocab_size=vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        max_position_embeddings=config.data.seq_length, bos_token_id=bos_id,
        eos_token_id=eos_id, tie_word_embeddings=False,
    )
    if m.arch == "ngpt":
        return NGPTConfig(**common, rope_theta=float(m.rotary_base),
                          scale_u_by_sqrt_d=m.ngpt_scale_u_by_sqrt_d, auto_map=dict(NGPT_AUTO_MAP))
    rope = {"rope_type": "default", "rope_theta": float(m.rotary_base)}
    gpt2 = dict(common, num_key_value_heads=m.num_attention_heads, hidden_act="silu")
    if m.normalization == "RMSNorm":
        return LlamaConfig(**gpt2, head_dim=m.head_dim, rms_norm_eps=m.layernorm_epsilon,
                           rope_parameters=rope, attention_bias=False, mlp_bias=False)
    return StableLmConfig(**gpt2, layer_norm_eps=m.layernorm_epsilon,
                          rope_parameters={**rope, "partial_rotary_factor": 1.0},
                          partial_rotary_factor=1.0, use_qkv_bias=False, qk_layernorm=False,
                          use_parallel_residual=False)


def is_export(folder: Path) -> bool:
    """Whether `folder` is a Hugging Face folder this exporter wrote (its `export_info.json`,
    or, for exports older than that file, a config.json beside safetensors weights), and no
    training run or checkpoint."""
    if (folder / "checkpoints").exists() or (folder / "metrics.jsonl").exists():
        return False
    if (folder / EXPORT_INFO).is_file():
        return True
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"{output_dir}: exists and is not a folder")
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"{output_dir}: the output folder is not empty; "
                          "pass --overwrite (overwrite=True) to replace an earlier export")
    if not is_export(output_dir):
        raise ExportError(f"{output_dir}: not an earlier export (no {EXPORT_INFO}, or it holds "
                          "a training run); --overwrite replaces only exports, choose another "
                          "--output")


def _write_model(config: Config, weights: dict[str, torch.Tensor], hf_cfg: PretrainedConfig,
                 dtype: torch.dtype, folder: Path) -> None:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg)
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True, assign=True)
    model.save_pretrained(folder)
    if config.model.arch == "ngpt":
        for module in (configuration_ngpt, modeling_ngpt):
            shutil.copy(module.__file__, folder / Path(module.__file__).name)


def export_to_hf(config: Config, state_dict: dict[str, torch.Tensor],
                 tokenizer_model_path: str | Path, output_dir: str | Path,
                 dtype: str | None = None, overwrite: bool = False,
                 source: dict[str, object] | None = None) -> Path:
    """Write the Hugging Face folder for a TP=1 `LanguageModel` state dict; returns its path.

    `dtype` defaults to the training precision (`training.precision`); `source` (what the
    weights came from) goes into `export_info.json`."""
    dtype = dtype or ("fp32" if config.training.precision == "fp32" else "bf16")
    output_dir = Path(output_dir)
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    _check_output_dir(output_dir, overwrite)
    weights = to_hf_state_dict(state_dict, config.model)
    vocab_size = weights["model.embed_tokens.weight"].shape[0]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    staging.chmod(0o755)
    try:
        tokenizer = export_tokenizer(tokenizer_model_path, staging)
        if tokenizer.vocab_size > vocab_size:
            raise ExportError(f"{tokenizer.path}: the tokenizer has {tokenizer.vocab_size} "
                              f"tokens but the model's embedding only {vocab_size} rows")
        hf_cfg = hf_config(config, vocab_size, tokenizer.bos_id, tokenizer.eos_id)
        _write_model(config, weights, hf_cfg, DTYPES[dtype], staging)
        info = {"arch": config.model.arch, "dtype": dtype, **(source or {})}
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=1) + "\n")
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
