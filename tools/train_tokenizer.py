"""Same as `python -m megatron_ngpt.cli.train_tokenizer`, where its code and usage live."""
from megatron_ngpt.cli.train_tokenizer import main

raise SystemExit(main())
