"""Same as `python -m megatron_ngpt.cli.plot_runs`, where its code and usage live."""
from megatron_ngpt.cli.plot_runs import main

raise SystemExit(main())
