"""Same as `python -m megatron_ngpt.cli.merge_datasets`, where its code and usage live."""
from megatron_ngpt.cli.merge_datasets import main

raise SystemExit(main())
