"""Command-line tools: `python -m megatron_ngpt.cli.NAME` (tools/NAME.py in a checkout)."""
