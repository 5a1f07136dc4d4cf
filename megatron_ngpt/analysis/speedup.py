"""The speedup estimate of the nGPT paper's comparison.

Each model is trained to completion, with its own cosine schedule, at several token budgets; its
final validation losses form a loss-vs-tokens curve. For every baseline budget, the speedup is the
baseline's tokens divided by the tokens at which the candidate's curve reaches the same loss.
Between measured budgets the curve is interpolated linearly in log(tokens), which is exact for a
power law sampled at the right points and close for a dense grid. Outside the measured range the
answer would be an extrapolation: it is computed from the nearest segment and marked as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise


class Reach(str, Enum):
    """How the tokens-to-reach estimate was obtained."""

    INTERPOLATED = "interpolated"
    BELOW_RANGE = "below range"  # the smallest measured budget already reaches the loss
    ABOVE_RANGE = "above range"  # even the largest measured budget does not reach it


@dataclass(frozen=True)
class TokensToReach:
    """Tokens a curve needs to reach a loss; `tokens` is None when no estimate is possible."""

    tokens: float | None
    reach: Reach
    bound: float | None  # the measured budget an extrapolated estimate lies beyond
    monotone: bool  # False: the curve rises somewhere, the first crossing is used

    @property
    def extrapolated(self) -> bool:
        return self.reach is not Reach.INTERPOLATED


def _sorted_points(tokens: Sequence[float], losses: Sequence[float]) -> list[tuple[float, float]]:
    if len(tokens) != len(losses):
        raise ValueError(f"{len(tokens)} token counts but {len(losses)} losses")
    if not tokens:
        raise ValueError("the curve has no points")
    points = sorted(zip(map(float, tokens), map(float, losses), strict=True))
    for t, loss in points:
        if not (t > 0 and math.isfinite(t)) or not math.isfinite(loss):
            raise ValueError(f"bad curve point (tokens={t}, loss={loss})")
    for a, b in pairwise(points):
        if a[0] == b[0]:
            raise ValueError(f"the curve has two points at {a[0]:g} tokens")
    return points


def _log_tokens_at(p: tuple[float, float], q: tuple[float, float], loss: float) -> float | None:
    """log(tokens) where the line through p, q (in log tokens, loss) meets `loss`; None if flat."""
    (t0, l0), (t1, l1) = p, q
    if l1 == l0:
        return None
    return math.log(t0) + (loss - l0) / (l1 - l0) * (math.log(t1) - math.log(t0))


def _extrapolate(p: tuple[float, float], q: tuple[float, float], loss: float) -> float | None:
    """Extend segment p-q only if the loss falls along it (a rising segment predicts nothing)."""
    if q[1] >= p[1]:
        return None
    log_t = _log_tokens_at(p, q, loss)
    return math.exp(log_t) if log_t is not None else None


def tokens_to_reach(
    tokens: Sequence[float], losses: Sequence[float], target: float
) -> TokensToReach:
    """The fewest tokens at which the piecewise log-linear curve reaches `target` loss."""
    points = _sorted_points(tokens, losses)
    monotone = all(b[1] <= a[1] for a, b in pairwise(points))
    first, last = points[0], points[-1]
    if first[1] == target:
        return TokensToReach(first[0], Reach.INTERPOLATED, None, monotone)
    if first[1] < target:
        estimate = _extrapolate(first, points[1], target) if len(points) > 1 else None
        return TokensToReach(estimate, Reach.BELOW_RANGE, first[0], monotone)
    for p, q in pairwise(points):
        if p[1] > target >= q[1]:
            return TokensToReach(math.exp(_log_tokens_at(p, q, target)), Reach.INTERPOLATED,
                                 None, monotone)
    estimate = _extrapolate(points[-2], last, target) if len(points) > 1 else None
    return TokensToReach(estimate, Reach.ABOVE_RANGE, last[0], monotone)


@dataclass(frozen=True)
class SpeedupRow:
    """One baseline budget: its final loss, the candidate's tokens to match it, the ratio."""

    baseline_tokens: float
    baseline_loss: float
    candidate: TokensToReach

    @property
    def ratio(self) -> float | None:
        if self.candidate.tokens is None:
            return None
        return self.baseline_tokens / self.candidate.tokens

    @property
    def ratio_bound(self) -> float | None:
        """The ratio at the measured edge: a lower bound for BELOW_RANGE, upper for ABOVE_RANGE."""
        bound = self.candidate.bound
        return None if bound is None else self.baseline_tokens / bound


def speedup_table(
    baseline: Sequence[tuple[float, float]], candidate: Sequence[tuple[float, float]]
) -> list[SpeedupRow]:
    """For each (tokens, final loss) of the baseline, where the candidate reaches that loss."""
    if not candidate:
        raise ValueError("the candidate model has no completed runs")
    cand_tokens, cand_losses = zip(*candidate, strict=True)
    return [
        SpeedupRow(t, loss, tokens_to_reach(cand_tokens, cand_losses, loss))
        for t, loss in sorted(baseline)
    ]
