"""Same as `python -m megatron_ngpt.cli.demo`, where its code and usage live."""
from megatron_ngpt.cli.demo import main

raise SystemExit(main())
