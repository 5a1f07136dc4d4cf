"""The bf16 regimes in the real trainer: DP=2 under ZeRO 1/2/3 follows one rank within the regime's
precision, a checkpoint resumes exactly, and its export computes the run's validation loss.

(The masters' unit norms and dtypes per regime and ZeRO stage are in test_renormalization.py.)
"""

from __future__ import annotations

import shutil

import pytest

from megatron_ngpt.cli import checkpoint_to_hf
from megatron_ngpt.training.checkpoint import step_dir_name
from tests.hf.parity import load_hf_model
from tests.training.trainer_runs import (
    after_resume,
    assert_close,
    hf_validation_loss,
    losses,
    subset,
    train,
    validation_samples,
)

STEPS, HALF = 4, 2
REGIMES = ["bf16", "bf16-params"]
# One rank against DP=2: the same sums in another order, rounded to bf16 along the way.
REL = 2e-2
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=REGIMES)
def reference(request, tmp_path_factory, tiny_dataset_prefix, sp_tokenizer_path):
    """nGPT on one rank with ZeRO-1 in the regime, saving at HALF."""
    run_dir = tmp_path_factory.mktemp(f"{request.param}-1rank")
    train(1, run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path, "--train-iters",
          str(STEPS), "--zero-stage", "1", "--precision", request.param, "--save-interval",
          str(HALF), "--eval-iters", "1")
    return request.param, run_dir


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_dp2_follows_one_rank(reference, zero, tmp_path, tiny_dataset_prefix, sp_tokenizer_path):
    precision, ref_dir = reference
    train(2, tmp_path, "ngpt", tiny_dataset_prefix, sp_tokenizer_path, "--train-iters",
          str(STEPS), "--zero-stage", str(zero), "--precision", precision)
    assert_close(losses(tmp_path), losses(ref_dir), rel=REL)


def test_checkpoint_resumes_exactly_and_exports(reference, tmp_path, tiny_dataset_prefix,
                                                 sp_tokenizer_path):
    precision, ref_dir = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / step_dir_name(STEPS))
    (run_dir / "checkpoints" / "latest").write_text(step_dir_name(HALF))
    train(1, run_dir, "ngpt", tiny_dataset_prefix, sp_tokenizer_path, "--train-iters",
          str(STEPS), "--zero-stage", "1", "--precision", precision, "--eval-iters", "1")
    resumed_at, resumed = after_resume(run_dir)
    assert resumed_at == HALF
    assert_close(resumed, subset(losses(ref_dir), range(HALF + 1, STEPS + 1)), rel=1e-6)

    out = tmp_path / "hf"
    assert checkpoint_to_hf.main(["--checkpoint", str(run_dir), "--output", str(out),
                                  "--dtype", "fp32"]) == 0
    recorded = losses(run_dir, "val_loss")[STEPS]
    # The export holds the bf16 run's weights exactly; it computes in fp32, training in bf16.
    exported = hf_validation_loss(load_hf_model(out), validation_samples(run_dir))
    assert exported == pytest.approx(recorded, rel=REL)
