"""The speedup math on curves whose answer is known."""

import math

import pytest

from megatron_ngpt.analysis.speedup import Reach, speedup_table, tokens_to_reach


def power_law(tokens: float, a: float = 2.0, b: float = 40.0, c: float = 0.3) -> float:
    return a + b * tokens ** -c


def gpt_loss(tokens: float) -> float:
    return power_law(tokens)


def ngpt_loss(tokens: float) -> float:
    """nGPT reaches at T tokens what GPT reaches at 4T."""
    return power_law(4 * tokens)


BUDGETS = [2**k * 250_000 for k in range(7)]  # 250K .. 16M


def test_ratio_is_four_when_grids_line_up():
    gpt = [(t, gpt_loss(t)) for t in BUDGETS[2:]]
    ngpt = [(t, ngpt_loss(t)) for t in BUDGETS]
    rows = speedup_table(gpt, ngpt)
    assert len(rows) == len(gpt)
    for row in rows:
        assert row.candidate.reach is Reach.INTERPOLATED
        assert row.ratio == pytest.approx(4.0, rel=1e-9)


def test_ratio_is_close_to_four_between_grid_points():
    gpt = [(t, gpt_loss(t)) for t in (1.3e6, 3.1e6, 7.7e6)]
    ngpt = [(t, ngpt_loss(t)) for t in (2**k * 1e5 for k in range(8))]
    for row in speedup_table(gpt, ngpt):
        assert row.candidate.reach is Reach.INTERPOLATED
        assert row.ratio == pytest.approx(4.0, rel=0.02)


def test_interpolation_is_linear_in_log_tokens():
    reach = tokens_to_reach([1e6, 4e6], [3.0, 2.0], 2.5)
    assert reach.tokens == pytest.approx(2e6)  # the geometric mean, not 2.5e6
    assert not reach.extrapolated


def test_loss_not_reached_is_marked_and_extrapolated_from_the_last_segment():
    reach = tokens_to_reach([1e6, 2e6, 4e6], [3.0, 2.8, 2.6], 2.4)
    assert reach.reach is Reach.ABOVE_RANGE and reach.extrapolated
    assert reach.bound == 4e6
    assert reach.tokens == pytest.approx(8e6)


def test_loss_reached_before_the_smallest_budget_is_marked():
    rows = speedup_table([(8e6, 3.5)], [(1e6, 3.0), (2e6, 2.8)])
    reach = rows[0].candidate
    assert reach.reach is Reach.BELOW_RANGE
    assert reach.tokens == pytest.approx(1e6 / 2 ** 2.5)
    assert rows[0].ratio_bound == pytest.approx(8.0)  # a lower bound on the speedup
    assert rows[0].ratio > rows[0].ratio_bound


def test_no_estimate_from_a_flat_or_rising_end_segment():
    reach = tokens_to_reach([1e6, 2e6], [2.5, 2.6], 2.0)
    assert reach.reach is Reach.ABOVE_RANGE and reach.tokens is None
    assert tokens_to_reach([1e6], [2.5], 2.0).tokens is None


def test_non_monotone_curve_uses_the_first_crossing():
    reach = tokens_to_reach([1e6, 2e6, 4e6, 8e6], [3.0, 2.7, 2.9, 2.5], 2.8)
    assert not reach.monotone
    assert 1e6 < reach.tokens < 2e6
    assert reach.reach is Reach.INTERPOLATED


def test_exact_hit_on_a_measured_budget():
    assert tokens_to_reach([1e6, 2e6], [3.0, 2.8], 3.0).tokens == 1e6
    assert tokens_to_reach([1e6, 2e6], [3.0, 2.8], 2.8).tokens == pytest.approx(2e6)


@pytest.mark.parametrize("tokens, losses, message", [
    ([], [], "no points"),
    ([1e6, 1e6], [3.0, 2.9], "two points"),
    ([0, 1e6], [3.0, 2.9], "bad curve point"),
    ([1e6, 2e6], [3.0, math.nan], "bad curve point"),
    ([1e6], [3.0, 2.0], "token counts but"),
])
def test_bad_curves_are_rejected(tokens, losses, message):
    with pytest.raises(ValueError, match=message):
        tokens_to_reach(tokens, losses, 2.5)
