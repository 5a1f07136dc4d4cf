"""Make a multiple-choice lm-eval task from held-out text: which continuation follows a passage.

    python tools/make_choice_task.py --input data/demo/heldout.jsonl --output-dir data/tasks \
        --name heldout_continuation [--items 400] [--context-words 24] [--continuation-words 6]

Writes NAME.yaml and NAME.jsonl into --output-dir; evaluate with
`tools/eval.py --tasks NAME --include-path OUTPUT_DIR`. Use text the model never trained on.
"""

from __future__ import annotations

import argparse
import sys

from megatron_ngpt.data.files import DataError
from megatron_ngpt.eval.choice_task import ChoiceTaskShape, write_choice_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="jsonl file, one document per line")
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--name", required=True, help="the lm-eval task name")
    defaults = ChoiceTaskShape()
    parser.add_argument("--items", type=int, default=defaults.max_items,
                        help="at most this many items, evenly spaced over the input")
    parser.add_argument("--min-items", type=int, default=1,
                        help="fail when the input gives fewer items")
    parser.add_argument("--context-words", type=int, default=defaults.context_words)
    parser.add_argument("--continuation-words", type=int, default=defaults.continuation_words)
    args = parser.parse_args(argv)
    if min(args.items, args.context_words, args.continuation_words) < 1:
        parser.error("--items, --context-words and --continuation-words must be at least 1")
    shape = ChoiceTaskShape(args.context_words, args.continuation_words, args.items)
    try:
        count = write_choice_task(args.input, args.output_dir, args.name, args.json_key, shape,
                                  args.min_items)
    except (DataError, FileNotFoundError) as err:
        print(f"make_choice_task: {err}", file=sys.stderr)
        return 2
    print(f"wrote {count} items of task {args.name} to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
