"""Same as `python -m megatron_ngpt.cli.make_choice_task`, where its code and usage live."""
from megatron_ngpt.cli.make_choice_task import main

raise SystemExit(main())
