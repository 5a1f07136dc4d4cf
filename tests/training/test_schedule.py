"""The learning-rate schedule: values at given steps, written out by hand from the definitions,
and the same values after a resume (the rate is a function of the position only)."""

from __future__ import annotations

import math

import pytest

from megatron_ngpt.config import ConfigError, OptimizerConfig, load_config
from megatron_ngpt.training.schedule import RunPlan, decay_start_step, lr_at


def _opt(**values) -> OptimizerConfig:
    return OptimizerConfig(**{"lr": 1.0, "min_lr": 0.0, "warmup_steps": 0, **values})


@pytest.mark.parametrize("style, shape, position, expected", [
    # 100 steps, wsd decays over the last 20 (from position 80 to 100)
    ("wsd", "linear", 0, 1.0), ("wsd", "linear", 79, 1.0), ("wsd", "linear", 80, 1.0),
    ("wsd", "linear", 90, 0.5), ("wsd", "linear", 95, 0.25), ("wsd", "linear", 100, 0.0),
    ("wsd", "1-sqrt", 85, 0.5), ("wsd", "1-sqrt", 96, 1 - math.sqrt(0.8)),
    ("wsd", "cosine", 90, 0.5), ("wsd", "cosine", 85, (1 + math.cos(math.pi / 4)) / 2),
    # the other styles decay over the whole run
    ("cosine", "1-sqrt", 50, 0.5), ("linear", "1-sqrt", 25, 0.75), ("constant", "linear", 99, 1.0),
])
def test_values_at_given_steps(style, shape, position, expected):
    opt = _opt(lr_decay_style=style, decay_fraction=0.2, decay_shape=shape)
    assert lr_at(position, opt, 100) == pytest.approx(expected, abs=1e-12)


def test_wsd_warmup_and_min_lr():
    opt = _opt(lr_decay_style="wsd", decay_fraction=0.2, decay_shape="1-sqrt", warmup_steps=10,
               min_lr=0.1)
    assert lr_at(4, opt, 100) == pytest.approx(0.5)  # (4 + 1) / 10 of the peak
    assert lr_at(50, opt, 100) == 1.0
    assert lr_at(85, opt, 100) == pytest.approx(0.1 + 0.9 * 0.5)


@pytest.mark.parametrize("total, fraction, warmup, expected", [
    (100, 0.2, 0, 80), (41, 0.2, 0, 33), (100, 0.2, 90, 90), (10, 1.0, 0, 0)])
def test_decay_start_step(total, fraction, warmup, expected):
    opt = _opt(lr_decay_style="wsd", decay_fraction=fraction, warmup_steps=warmup)
    start = decay_start_step(opt, total)
    assert start == expected
    # every earlier step runs at the peak (or warmup) rate
    assert all(lr_at(p, opt, total) == lr_at(p, _opt(warmup_steps=warmup,
                                                       lr_decay_style="constant"), total)
               for p in range(start))


PEAK, FLOOR = 1e-3, 1e-5


@pytest.mark.parametrize("style, expected", [
    # warmup 4 of 20 steps, then 16 decay steps from the peak to the floor
    ("cosine", {0: PEAK / 4, 3: PEAK, 4: PEAK, 12: (PEAK + FLOOR) / 2, 20: FLOOR, 30: FLOOR,
                8: FLOOR + (PEAK - FLOOR) * 0.5 * (1 + math.cos(math.pi / 4))}),
    ("linear", {1: PEAK / 2, 4: PEAK, 12: (PEAK + FLOOR) / 2, 16: FLOOR + (PEAK - FLOOR) / 4,
                20: FLOOR}),
    ("constant", {0: PEAK / 4, 4: PEAK, 19: PEAK}),
])
def test_warmup_then_decay_over_the_whole_run(style, expected):
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


def _budget_config(*overrides: str):
    return load_config("configs/tiny/ngpt.yaml", [
        "training.train_iters=0", "training.train_tokens=204800", "optimizer.lr=1.0",
        "optimizer.lr_decay_style=wsd", "optimizer.decay_fraction=0.2",
        "optimizer.decay_shape=linear", *overrides])


def test_resume_continues_the_same_rates():
    cfg = _budget_config()
    size = cfg.tokens_per_step  # 100 steps
    full = RunPlan.for_run(cfg)
    resumed = RunPlan.for_run(cfg, 37, 37 * size)
    assert resumed.total_steps == full.total_steps == 100
    for step in range(37, 100):
        assert resumed.lr(cfg.optimizer, step, step * size) == full.lr(cfg.optimizer, step,
                                                                        step * size)
    assert full.lr(cfg.optimizer, 90, 90 * size) == pytest.approx(0.5)


def test_resume_with_another_batch_size_continues_over_tokens():
    cfg = _budget_config()
    size = cfg.tokens_per_step
    bigger = _budget_config("training.global_batch_size=32")  # twice the tokens per step
    plan = RunPlan.for_run(bigger, 40, 40 * size)
    assert plan.total_steps == 40 + 30
    # after k more steps the run has consumed 40 + 2k of the old steps' tokens
    assert [plan.lr(bigger.optimizer, 40 + k, (40 + 2 * k) * size) for k in (20, 25)] == \
        pytest.approx([1.0, 0.5])


def test_cooldown_branch_continues_the_stable_run_as_one_wsd_run():
    """A branch resumed at the decay start of its budget has exactly the rates of a WSD run of
    that budget, and before it the stable (constant) run had that run's rates too."""
    cfg = _budget_config()
    size = cfg.tokens_per_step
    start = decay_start_step(cfg.optimizer, 100)
    stable = _budget_config("optimizer.lr_decay_style=constant",
                            f"training.train_tokens={start * size}")
    full, branch = RunPlan.for_run(cfg), RunPlan.for_run(cfg, start, start * size)
    stable_plan = RunPlan.for_run(stable)
    assert stable_plan.total_steps == start == 80
    for step in range(start):
        assert stable_plan.lr(stable.optimizer, step, step * size) == \
            full.lr(cfg.optimizer, step, step * size)
    for step in range(start, 100):
        assert branch.lr(cfg.optimizer, step, step * size) == \
            full.lr(cfg.optimizer, step, step * size)


@pytest.mark.parametrize("override, message", [
    ("optimizer.decay_fraction=0", "optimizer.decay_fraction: must be in"),
    ("optimizer.decay_fraction=1.5", "optimizer.decay_fraction: must be in"),
    ("optimizer.decay_shape=sqrt", "optimizer.decay_shape: 'sqrt' is not one of"),
    ("optimizer.lr_decay_style=wsdd", "optimizer.lr_decay_style: 'wsdd' is not one of"),
    ("training.keep_steps=[0, 3]", "training.keep_steps: steps must be at least 1"),
    ("training.load_step=3", "training.load_step: needs training.load"),
])
def test_bad_schedule_settings_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny/ngpt.yaml", [override])
