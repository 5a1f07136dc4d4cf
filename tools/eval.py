"""Same as `python -m megatron_ngpt.cli.eval`, where its code and usage live."""
from megatron_ngpt.cli.eval import main

raise SystemExit(main())
