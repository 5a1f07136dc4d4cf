"""Same as `python -m megatron_ngpt.cli.preprocess_data`, where its code and usage live."""
from megatron_ngpt.cli.preprocess_data import main

raise SystemExit(main())
