"""TP=1, 2 and 4 (gloo, CPU) compute the same model: logits, loss, gradients, normalization."""

from __future__ import annotations

import pytest
import torch

from tests.distributed import run_on_ranks

TP_SIZES = (1, 2, 4)


@pytest.fixture(scope="module")
def runs() -> dict[int, dict]:
    return {tp: run_on_ranks(tp, "tests.models.tp_worker:run_both", tp, timeout=300)[0]
            for tp in TP_SIZES}


@pytest.mark.slow
@pytest.mark.parametrize("tp", TP_SIZES[1:])
@pytest.mark.parametrize("arch", ["ngpt", "gpt2"])
def test_tensor_parallel_matches_single_rank(runs, arch: str, tp: int) -> None:
    ref, got = runs[1][arch], runs[tp][arch]
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    close(got["logits"], ref["logits"])
    close(got["loss"], ref["loss"])
    assert got["grads"].keys() == ref["grads"].keys()
    for name, grad in ref["grads"].items():
        assert grad.abs().max() > 0, name
        close(got["grads"][name], grad)
    assert got["normalized"].keys() == ref["normalized"].keys()
    assert bool(ref["normalized"]) == (arch == "ngpt")
    for name, matrix in ref["normalized"].items():
        close(got["normalized"][name], matrix)
