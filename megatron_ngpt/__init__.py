"""nGPT and its GPT-2 baseline on megatron-core and DeepSpeed."""

from megatron_ngpt.log import configure_console

# Before megatron-core or DeepSpeed load: they warn while importing (see `log.py`).
configure_console()
