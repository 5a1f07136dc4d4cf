"""The learning rate at given steps, written from the formulas, and where a resumed run stands."""

from __future__ import annotations

import math

import pytest

from megatron_ngpt.config import OptimizerConfig, load_config
from megatron_ngpt.training.schedule import RunPlan, lr_at

PEAK, FLOOR = 1e-3, 1e-5


@pytest.mark.parametrize("style, expected", [
    # warmup 4 of 20 steps, then 16 decay steps from the peak to the floor
    ("cosine", {0: PEAK / 4, 3: PEAK, 4: PEAK, 12: (PEAK + FLOOR) / 2, 20: FLOOR, 30: FLOOR,
                8: FLOOR + (PEAK - FLOOR) * 0.5 * (1 + math.cos(math.pi / 4))}),
    ("linear", {1: PEAK / 2, 4: PEAK, 12: (PEAK + FLOOR) / 2, 16: FLOOR + (PEAK - FLOOR) / 4,
                20: FLOOR}),
    ("constant", {0: PEAK / 4, 4: PEAK, 19: PEAK}),
])
def test_values_at_given_steps(style, expected):
    opt = OptimizerConfig(lr=PEAK, min_lr=FLOOR, warmup_steps=4, lr_decay_style=style)
    for step, value in expected.items():
        assert lr_at(step, opt, 20) == pytest.approx(value, rel=1e-12), (style, step)


def test_iteration_budget_plan():
    cfg = load_config("configs/tiny/ngpt.yaml", ["training.train_iters=50"])
    plan = RunPlan.for_run(cfg, step=10, tokens=10 * cfg.tokens_per_step)
    assert (plan.total_steps, plan.schedule_total, plan.token_budget) == (50, 50, False)
    assert plan.position(10, 12345) == 10.0  # steps, whatever the tokens


def test_token_budget_is_rounded_up_to_whole_steps():
    cfg = load_config("configs/tiny/ngpt.yaml", ["training.train_iters=0",
                                                 "training.train_tokens=10000"])
    plan = RunPlan.for_run(cfg)
    assert cfg.tokens_per_step == 2048 and plan.total_steps == 5 and plan.schedule_total == 5


def test_resumed_token_budget_with_another_batch_continues_over_tokens():
    base = ["training.train_iters=0", "training.train_tokens=65536", "optimizer.warmup_steps=0"]
    before = load_config("configs/tiny/ngpt.yaml", base)  # 2048 tokens per step: 32 steps
    after = load_config("configs/tiny/ngpt.yaml", [*base, "training.global_batch_size=64"])
    straight = RunPlan.for_run(before)
    resumed = RunPlan.for_run(after, step=12, tokens=12 * 2048)  # 8192 tokens per step now
    assert resumed.total_steps == 12 + 5  # 40960 tokens left, 5 steps of 8192
    opt = before.optimizer
    for done in range(5):  # the same rate at the same tokens consumed
        tokens = 12 * 2048 + done * 8192
        assert resumed.lr(opt, 12 + done, tokens) == pytest.approx(
            straight.lr(opt, tokens // 2048, tokens), rel=1e-12)
