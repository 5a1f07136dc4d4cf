"""Hugging Face export: nGPT's transformers classes, the state-dict adapter and the exporter.

Importing this package registers `NGPTConfig` / `NGPTForCausalLM` with `AutoConfig` /
`AutoModelForCausalLM`, so exported nGPT folders also load without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from megatron_ngpt.hf.configuration_ngpt import NGPTConfig
from megatron_ngpt.hf.modeling_ngpt import NGPTForCausalLM

AutoConfig.register(NGPTConfig.model_type, NGPTConfig, exist_ok=True)
AutoModelForCausalLM.register(NGPTConfig, NGPTForCausalLM, exist_ok=True)

__all__ = ["NGPTConfig", "NGPTForCausalLM"]
