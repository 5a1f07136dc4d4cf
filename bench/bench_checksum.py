"""What checksumming checkpoints costs: `torch.save` vs `digest.save_hashed` side by side.

Writes the same state dict (fp32 tensors of `--mb` MB in total) both ways into a temporary folder,
`--repeats` times in alternation, and prints the median seconds and throughput of each, the
overhead, and the projection to a 0.5B checkpoint (bf16 model + fp32 masters and Adam moments in
DeepSpeed's shards, plus the layout-independent fp32 weights and moments: 26 bytes per parameter).

    python bench/bench_checksum.py [--mb 1024] [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from megatron_ngpt.training.digest import file_digest, save_hashed

PARAMS_0_5B = 468_491_520  # nGPT 0.5B (python -m megatron_ngpt.summary)
BYTES_PER_PARAM = 2 + 4 + 8 + 4 + 8  # bf16 model, fp32 master, Adam moments; fp32 copies


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: the temp folder)")
    args = parser.parse_args()
    tensors = 16
    state = {f"w{i}": torch.randn(args.mb * 2**20 // 4 // tensors) for i in range(tensors)}
    size = sum(t.numel() * 4 for t in state.values())
    times: dict[str, list[float]] = {"torch.save": [], "save_hashed": [], "verify (read+hash)": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain, hashed = Path(tmp) / "plain.pt", Path(tmp) / "hashed.pt"
        for _ in range(args.repeats):
            times["torch.save"].append(_timed(lambda: torch.save(state, plain)))
            times["save_hashed"].append(_timed(lambda: save_hashed(state, hashed)))
            times["verify (read+hash)"].append(_timed(lambda: file_digest(hashed)))
    print(f"{size / 2**20:.0f} MB state dict, median of {args.repeats}\n")
    print("| what | seconds | GB/s |")
    print("|---|---|---|")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} | {size / seconds / 1e9:.2f} |")
    extra = medians["save_hashed"] - medians["torch.save"]
    checkpoint = PARAMS_0_5B * BYTES_PER_PARAM
    print(f"\noverhead of hashing while writing: {extra:+.3f} s "
          f"({extra / medians['torch.save']:+.1%} of torch.save)")
    scale = checkpoint / size
    print(f"0.5B checkpoint ~{checkpoint / 1e9:.1f} GB: hashing adds ~{extra * scale:.1f} s to a "
          f"save; verifying reads it once, ~{medians['verify (read+hash)'] * scale:.1f} s")


if __name__ == "__main__":
    main()
