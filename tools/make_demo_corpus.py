"""Same as `python -m megatron_ngpt.cli.make_demo_corpus`, where its code and usage live."""
from megatron_ngpt.cli.make_demo_corpus import main

raise SystemExit(main())
