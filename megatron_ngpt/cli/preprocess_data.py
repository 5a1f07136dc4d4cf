"""Tokenize jsonl / text files / a Hugging Face dataset into megatron-core indexed datasets.

    python tools/preprocess_data.py --input 'data/*.jsonl.zst' --tokenizer-model tokenizer.model \
        --output-prefix data/corpus --workers 8

writes data/corpus_text_document.bin/.idx (one pair per --json-keys key). See docs/data.md.
"""

from __future__ import annotations

import argparse
import signal
import sys

from megatron_ngpt.data.files import DataError
from megatron_ngpt.data.preprocess import preprocess
from megatron_ngpt.data.sources import TEXT_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", default=[],
                        help="files or quoted globs: .jsonl (.gz/.zst) or text files")
    parser.add_argument("--hf-dataset", help="Hugging Face dataset name or local path")
    parser.add_argument("--hf-split", default="train")
    parser.add_argument("--json-keys", nargs="+", default=["text"])
    parser.add_argument("--text-mode", choices=TEXT_MODES, default="jsonl",
                        help="jsonl (default), file (one document per file) or blocks "
                             "(blank-line-separated blocks)")
    parser.add_argument("--tokenizer-model", required=True,
                        help="SentencePiece .model, tokenizer.json, or a folder with either")
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256, help="documents per worker task")
    parser.add_argument("--append-eod", action=argparse.BooleanOptionalAction, default=True,
                        help="end every document with the eod (eos) token")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the first bad record instead of skipping it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # raises SystemExit, so temporaries are removed on the way out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        stats = preprocess(args.output_prefix, args.tokenizer_model, args.input,
                           json_keys=args.json_keys, text_mode=args.text_mode,
                           hf_dataset=args.hf_dataset, hf_split=args.hf_split,
                           workers=args.workers, batch_size=args.batch_size,
                           append_eod=args.append_eod, strict=args.strict,
                           progress=not args.quiet)
    except (DataError, OSError, ImportError) as err:  # one line naming the file
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    print(stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
