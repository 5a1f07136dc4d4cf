"""Same as `python -m megatron_ngpt.cli.sweep`, where its code and usage live."""
from megatron_ngpt.cli.sweep import main

raise SystemExit(main())
