"""nGPT's matrices stay unit-norm in the masters and the model copies under every ZeRO stage and
precision regime (the masters in the regime's dtype), including vectors that a ZeRO partition
boundary splits between ranks."""

from __future__ import annotations

import pytest

from tests.distributed import run_on_ranks

CASES = {  # name: (ranks, zero stage, precision, pipeline stages)
    "zero0-bf16": (2, 0, "bf16", 1),
    "zero1-fp32": (3, 1, "fp32", 1),
    "zero1-bf16": (3, 1, "bf16", 1),
    "zero2-fp32": (3, 2, "fp32", 1),
    "zero2-bf16": (3, 2, "bf16", 1),
    "zero3-fp32": (2, 3, "fp32", 1),
    "zero3-bf16": (2, 3, "bf16", 1),
    "zero1-bf16-params": (3, 1, "bf16-params", 1),
    "zero2-bf16-params": (3, 2, "bf16-params", 1),
    "zero3-bf16-params": (2, 3, "bf16-params", 1),
    "pp2-dp2-zero1": (4, 1, "fp32", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_master_and_model_weights_stay_unit_norm(case):
    ranks, zero, precision, pp = CASES[case]
    results = run_on_ranks(ranks, "tests.training.renorm_worker:check", zero, precision, pp)
    assert results[0]["matrices"] > 0
    # The masters really have the regime's dtype, as DeepSpeed holds them.
    expected = "torch.bfloat16" if precision == "bf16-params" else "torch.float32"
    assert {d for r in results for d in r["master_dtypes"]} == {expected}
    if zero > 0:
        assert results[0]["cut_vectors"] > 0
