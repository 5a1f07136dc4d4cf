"""Same as `python -m megatron_ngpt.cli.checkpoint_to_hf`, where its code and usage live."""
from megatron_ngpt.cli.checkpoint_to_hf import main

raise SystemExit(main())
