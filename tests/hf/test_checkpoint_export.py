"""Export from real training checkpoints of every layout: TP=2, PP=2 and ZeRO-2 with DP=2.

The trainer runs a couple of steps in each layout; the checkpoint's consolidated weights, loaded
into a one-rank `LanguageModel`, are the training model, and the exported folder must give its
logits and its greedy tokens.
"""

from __future__ import annotations

import pytest
import torch

from megatron_ngpt.cli import checkpoint_to_hf
from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.transformer_config import build_transformer_config
from megatron_ngpt.training.checkpoint import load_consolidated
from tests.hf.parity import assert_logit_parity, greedy_decode, load_hf_model
from tests.training.trainer_runs import train

LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2", "--zero-stage", "1"],
    "pp2": ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"],
    "zero2-dp2": ["--zero-stage", "2"],
}
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ["ngpt", "gpt2"])
def test_export_matches_the_trained_model(arch, layout, tmp_path, single_rank,
                                          tiny_dataset_prefix, sp_tokenizer_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "hf"
    train(2, run_dir, arch, tiny_dataset_prefix, sp_tokenizer_path, "--train-iters", "2",
          *LAYOUTS[layout])
    assert checkpoint_to_hf.main(["--checkpoint", str(run_dir), "--output", str(out_dir),
                      "--dtype", "fp32"]) == 0

    cfg, state, _ = load_consolidated(run_dir)
    model = LanguageModel(build_transformer_config(cfg.model, cfg.model.vocab_size)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("_extra_state")]

    tokens = torch.randint(0, 900, (2, 32), generator=torch.Generator().manual_seed(0))
    assert assert_logit_parity(model, out_dir, tokens, atol=1e-4) < 1e-4
    prompt = tokens[:, :8]
    hf = load_hf_model(out_dir)
    generated = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                            min_new_tokens=8, do_sample=False,
                            pad_token_id=hf.config.eos_token_id)
    assert torch.equal(generated, greedy_decode(model, prompt, 8))
