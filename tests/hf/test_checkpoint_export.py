"""Export from real training checkpoints of every layout: TP=2, PP=2 and ZeRO-2 with DP=2.

The evidence is the training run's own: its last validation loss, computed by the sharded model
on the validation samples and written to metrics.jsonl. The exported Hugging Face model, loaded
as any user would, must compute the same loss on the same samples (fp32, so to float rounding);
a gather or export bug changes it. Greedy decoding of the export must also equal greedy decoding
of the checkpoint's consolidated weights in a one-rank `LanguageModel`.
"""

from __future__ import annotations

import pytest
import torch

from megatron_ngpt.cli import checkpoint_to_hf
from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.transformer_config import build_transformer_config
from megatron_ngpt.training.checkpoint import load_consolidated
from tests.hf.parity import greedy_decode, load_hf_model
from tests.training.trainer_runs import hf_validation_loss, losses, train, validation_samples

LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2", "--zero-stage", "1"],
    "pp2": ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"],
    "zero2-dp2": ["--zero-stage", "2"],
}
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ["ngpt", "gpt2"])
def test_export_reproduces_the_training_runs_validation_loss(arch, layout, tmp_path, single_rank,
                                                             tiny_dataset_prefix,
                                                             sp_tokenizer_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "hf"
    train(2, run_dir, arch, tiny_dataset_prefix, sp_tokenizer_path, "--train-iters", "2",
          "--eval-iters", "1", *LAYOUTS[layout])
    recorded = losses(run_dir, "val_loss")[2]
    assert checkpoint_to_hf.main(["--checkpoint", str(run_dir), "--output", str(out_dir)]) == 0
    hf = load_hf_model(out_dir)
    assert {p.dtype for p in hf.parameters()} == {torch.float32}  # the training precision
    exported = hf_validation_loss(hf, validation_samples(run_dir))
    assert exported == pytest.approx(recorded, rel=2e-6, abs=0)

    cfg, state, _ = load_consolidated(run_dir)
    model = LanguageModel(build_transformer_config(cfg.model, cfg.model.vocab_size)).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("_extra_state")]
    prompt = torch.randint(0, 900, (2, 8), generator=torch.Generator().manual_seed(0))
    generated = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                            min_new_tokens=8, do_sample=False,
                            pad_token_id=hf.config.eos_token_id)
    assert torch.equal(generated, greedy_decode(model, prompt, 8))
