"""Export a training checkpoint as a Hugging Face model folder (safetensors + tokenizer).

    python tools/checkpoint_to_hf.py --checkpoint runs/ngpt --output exports/ngpt
    python tools/checkpoint_to_hf.py --checkpoint runs/gpt2 --step 2000 --output exports/gpt2 \
        --dtype fp32 --overwrite

GPT-2 becomes a stock LlamaForCausalLM (StableLmForCausalLM with LayerNorm); nGPT becomes
NGPTForCausalLM, loaded with trust_remote_code=True. Any checkpoint layout (TP, PP, ZeRO) works.
"""

from __future__ import annotations

import argparse
import sys

from megatron_ngpt.hf.export import DTYPES, export_to_hf
from megatron_ngpt.training.checkpoint import load_consolidated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="run directory of a training run")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--output", required=True, help="folder to write the model into")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="weights' dtype (default: the training precision)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --output (never anything else)")
    args = parser.parse_args(argv)
    try:
        config, state_dict, step = load_consolidated(args.checkpoint, args.step)
        output = export_to_hf(config, state_dict, config.data.tokenizer_model, args.output,
                              args.dtype, args.overwrite,
                              {"checkpoint": str(args.checkpoint), "step": step})
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    dtype = args.dtype or ("fp32" if config.training.precision == "fp32" else "bf16")
    print(f"exported {config.model.arch} step {step} of {args.checkpoint} to {output} ({dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
