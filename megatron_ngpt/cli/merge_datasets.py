"""Concatenate indexed datasets (PREFIX.bin/.idx) into one, keeping document boundaries.

    python tools/merge_datasets.py --input data/a_text_document data/b_text_document \
        --output-prefix data/ab_text_document
"""

from __future__ import annotations

import argparse
import sys

from megatron_ngpt.data.indexed import merge_datasets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="dataset prefixes, in order")
    parser.add_argument("--output-prefix", required=True)
    args = parser.parse_args(argv)
    try:
        documents = merge_datasets(args.input, args.output_prefix)
    except (OSError, ValueError) as err:  # DataError is a ValueError: one line naming the file
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output_prefix}.bin/.idx: {documents} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
