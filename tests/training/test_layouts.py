"""Same data, same seed: every parallel layout gives the 1-rank losses and gradient norms (fp32,
CPU, gloo). The gradient norm is DeepSpeed's global one: a parameter counted twice (or missed)
across tensor-parallel ranks shows there even when the loss does not move yet."""

from __future__ import annotations

import pytest

from tests.training.trainer_runs import assert_close, losses, train

STEPS = 5
LAYOUTS = {  # name: (ranks, flags)
    "tp2": (2, ["--tensor-model-parallel-size", "2", "--zero-stage", "0"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"]),
    "dp2-zero1": (2, ["--zero-stage", "1"]),
    "dp2-zero2": (2, ["--zero-stage", "2"]),
    "dp2-zero3": (2, ["--zero-stage", "3"]),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                    "--zero-stage", "1"]),
    # torch.compile'd layers (inductor on CPU), data parallel with ZeRO-2.
    "compiled-dp2-zero2": (2, ["--zero-stage", "2", "model.compile_layers=true"]),
}


@pytest.fixture(scope="module", params=["ngpt", "gpt2"])
def reference(request, tmp_path_factory, tiny_dataset_prefix, sp_tokenizer_path):
    arch = request.param
    run_dir = tmp_path_factory.mktemp(f"{arch}-1rank")
    train(1, run_dir, arch, tiny_dataset_prefix, sp_tokenizer_path, "--train-iters", str(STEPS),
          "--zero-stage", "0")
    return arch, run_dir


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_reproduces_single_rank_losses(layout, reference, tmp_path, tiny_dataset_prefix,
                                              sp_tokenizer_path):
    arch, ref_dir = reference
    ranks, flags = LAYOUTS[layout]
    train(ranks, tmp_path, arch, tiny_dataset_prefix, sp_tokenizer_path,
          "--train-iters", str(STEPS), *flags)
    got = losses(tmp_path)
    assert len(got) == STEPS
    assert_close(got, losses(ref_dir), rel=1e-4)
    assert_close(losses(tmp_path, "grad_norm"), losses(ref_dir, "grad_norm"), rel=1e-4)
