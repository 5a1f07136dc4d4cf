"""Train a LLaMA-style SentencePiece BPE tokenizer (byte fallback, split digits, unk=0 bos=1 eos=2).

    python tools/train_tokenizer.py --input data/demo/corpus.jsonl --vocab-size 32000 \
        --output-prefix data/demo/tokenizer

writes data/demo/tokenizer.model and .vocab. Inputs: .jsonl (.gz/.zst; --json-key) or text files.
"""

from __future__ import annotations

import argparse
import sys

from megatron_ngpt.data.files import DataError
from megatron_ngpt.data.tokenizer_training import train_sentencepiece


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="files or quoted globs")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--input-sentence-size", type=int, default=1_000_000,
                        help="lines sampled for training (fewer is faster)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        model = train_sentencepiece(args.input, args.vocab_size, args.output_prefix,
                                    json_key=args.json_key,
                                    input_sentence_size=args.input_sentence_size,
                                    num_threads=args.threads)
    except (DataError, OSError, ImportError) as err:  # one line naming the file
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {model} and {args.output_prefix}.vocab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
