"""Build the demo corpus (a few MB of CPython's own documentation, no download) as jsonl.

    python tools/make_demo_corpus.py --output data/demo/corpus.jsonl \
        --held-out data/demo/heldout.jsonl
"""

from __future__ import annotations

import argparse
import sys

from megatron_ngpt.data.demo_corpus import HELD_OUT_EVERY, write_demo_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="data/demo/corpus.jsonl")
    parser.add_argument("--held-out", help=f"also write every {HELD_OUT_EVERY}th document here "
                                           "(and not to --output)")
    args = parser.parse_args(argv)
    train, held_out = write_demo_corpus(args.output, args.held_out)
    print(f"wrote {train} documents to {args.output}"
          + (f" and {held_out} to {args.held_out}" if args.held_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
