"""Training throughput of the tiny nGPT and GPT-2 on CPU, against a stock Hugging Face Llama.

    python bench/bench_train.py [--vocab 4096] [--batch 16] [--seq 128] [--steps 10] [--rounds 5]
                                [--compile-layers]

One process, fp32, torch AdamW, random tokens. Every model trains on the same batches; timings
are taken in interleaved rounds (so that load from other processes hits every model alike) and
the median round is reported. nGPT's step includes renormalizing its matrices, which is also
timed alone. The reference is `LlamaForCausalLM` with the tiny GPT-2's shape (RMSNorm, SwiGLU,
RoPE, no biases, untied head): the ratio says what our megatron-core layers cost over it.
`--compile-layers` adds both models with `model.compile_layers` (inductor's CPU code).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from megatron_ngpt.config import ModelConfig, load_config, padded_vocab_size
from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.normalize import normalize_model_
from megatron_ngpt.models.transformer_config import build_transformer_config
from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny"


@dataclass
class Bench:
    name: str
    model: torch.nn.Module
    loss: Callable[[torch.Tensor], torch.Tensor]  # tokens [b, s + 1] -> mean loss
    renormalize: bool = False
    step_times: list[float] = field(default_factory=list)
    renorm_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95),
                                           weight_decay=0.0)

    def step(self, tokens: torch.Tensor) -> float:
        """One training step; returns the seconds spent renormalizing (0 without)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(tokens).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        if not self.renormalize:
            return 0.0
        start = time.perf_counter()
        normalize_model_(self.model)
        return time.perf_counter() - start

    def round(self, batches: list[torch.Tensor]) -> None:
        start, renorm = time.perf_counter(), 0.0
        for tokens in batches:
            renorm += self.step(tokens)
        self.step_times.append((time.perf_counter() - start) / len(batches))
        self.renorm_times.append(renorm / len(batches))


def megatron_bench(name: str, model_cfg: ModelConfig, vocab: int) -> Bench:
    model = LanguageModel(build_transformer_config(model_cfg, vocab))
    return Bench(name, model, lambda t: model(t[:, :-1], labels=t[:, 1:]),
                 renormalize=model_cfg.arch == "ngpt")


def llama_bench(model_cfg: ModelConfig, vocab: int, seq: int) -> Bench:
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.ffn_hidden_size, num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_attention_heads,
        num_key_value_heads=model_cfg.num_attention_heads, max_position_embeddings=seq,
        rms_norm_eps=model_cfg.layernorm_epsilon, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, initializer_range=model_cfg.init_std_value,
        rope_parameters={"rope_type": "default", "rope_theta": float(model_cfg.rotary_base)},
    )
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)

    def loss(tokens: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=tokens[:, :-1], use_cache=False).logits
        return F.cross_entropy(logits.reshape(-1, vocab).float(), tokens[:, 1:].reshape(-1))

    return Bench("HF LlamaForCausalLM (GPT-2 shape)", model, loss)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=4096, help="tokenizer vocabulary size")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="sequence length")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--compile-layers", action="store_true",
                        help="also time both models with torch.compile'd layers")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    init_distributed(1, 1, "cpu")
    configs = {arch: load_config(TINY / f"{arch}.yaml").model for arch in ("ngpt", "gpt2")}
    vocab = padded_vocab_size(args.vocab, configs["gpt2"].make_vocab_size_divisible_by, 1)
    benches = [megatron_bench("nGPT (tiny)", configs["ngpt"], vocab),
               megatron_bench("GPT-2 (tiny)", configs["gpt2"], vocab),
               llama_bench(configs["gpt2"], vocab, args.seq)]
    if args.compile_layers:
        benches[2:2] = [megatron_bench(f"{name} (tiny, compiled layers)",
                                       dataclasses.replace(configs[arch], compile_layers=True),
                                       vocab)
                        for arch, name in (("ngpt", "nGPT"), ("gpt2", "GPT-2"))]
    batches = [torch.randint(0, vocab, (args.batch, args.seq + 1)) for _ in range(args.steps)]
    for bench in benches:  # warm-up: allocator, autograd graph, AdamW state
        bench.step(batches[0])
    for _ in range(args.rounds):
        for bench in benches:
            bench.round(batches)
    shutdown_distributed()

    tokens = args.batch * args.seq
    step = {b.name: statistics.median(b.step_times) for b in benches}
    reference = benches[-1].name
    print(f"\nCPU, {args.threads} thread(s), fp32, vocab {vocab}, batch {args.batch} x "
          f"{args.seq} tokens, median of {args.rounds} rounds of {args.steps} steps\n")
    print("| model | params | step (ms) | tokens/s | renorm (ms) | tokens/s vs HF Llama |")
    print("|---|---|---|---|---|---|")
    for bench in benches:
        params = sum(p.numel() for p in bench.model.parameters())
        renorm = f"{1e3 * statistics.median(bench.renorm_times):.1f}" if bench.renormalize else "-"
        print(f"| {bench.name} | {params / 1e6:.2f}M | {1e3 * step[bench.name]:.1f} | "
              f"{tokens / step[bench.name]:,.0f} | {renorm} | "
              f"{step[reference] / step[bench.name]:.2f} |")
    print(f"\nnGPT / GPT-2 step time: {step['nGPT (tiny)'] / step['GPT-2 (tiny)']:.2f}")
    if args.compile_layers:
        for name in ("nGPT", "GPT-2"):
            eager, compiled = step[f"{name} (tiny)"], step[f"{name} (tiny, compiled layers)"]
            print(f"{name}: compiled layers {eager / compiled:.2f}x the eager speed")


if __name__ == "__main__":
    main()
