"""The final validation losses of a sweep's runs, as the speedup method needs them.

Runs are compared within a group (precision, context). Within a group, each (model, tokens) may
have been trained at several learning rates: the point used is the run with the best final loss,
the others are kept for the report. WSD stable runs give no point (they never anneal); their
cooldown branches do, as complete runs do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_ngpt.analysis.runs import Run, RunError, is_complete, load_run
from megatron_ngpt.experiments.manifest import COOLDOWN, STABLE, Sweep, SweepRun

Group = tuple[str | None, int | None]  # (precision, context); None in a version 1 manifest


@dataclass(frozen=True)
class Point:
    """One completed run's final validation loss and what produced it."""

    model: str
    group: Group
    tokens: int
    loss: float
    lr: float | None
    method: str
    run_dir: str


def method_of(sweep: Sweep, spec: SweepRun) -> str:
    """How a point was produced, for the report: a complete run's schedule, or a WSD cooldown."""
    if spec.role == COOLDOWN:
        return f"WSD cooldown ({sweep.decay_shape}, last {sweep.decay_fraction:.0%})"
    return spec.schedule or "complete run"


def group_label(group: Group) -> str:
    precision, context = group
    return "base config" if precision is None else f"{precision}, context {context}"


@dataclass
class SweepResults:
    points: list[Point] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)  # run_dir -> completed run with a point
    incomplete: list[str] = field(default_factory=list)  # run dirs without a final validation

    def groups(self) -> list[Group]:
        return sorted({p.group for p in self.points}, key=lambda g: (str(g[0]), g[1] or 0))

    def in_group(self, group: Group) -> list[Point]:
        return [p for p in self.points if p.group == group]

    def best(self, group: Group) -> dict[str, list[Point]]:
        """model -> the best point per token count (over learning rates), by tokens."""
        chosen: dict[tuple[str, int], Point] = {}
        for point in self.in_group(group):
            key = (point.model, point.tokens)
            if key not in chosen or point.loss < chosen[key].loss:
                chosen[key] = point
        best: dict[str, list[Point]] = {}
        for (model, _), point in sorted(chosen.items()):
            best.setdefault(model, []).append(point)
        return best

    def finals(self, group: Group) -> dict[str, list[tuple[int, float]]]:
        """model -> [(tokens, best final loss)], the curve the speedup is read from."""
        return {model: [(p.tokens, p.loss) for p in points]
                for model, points in self.best(group).items()}

    def learning_rates_per_point(self, group: Group) -> int:
        """The fewest learning rates any (model, tokens) of the group was trained at."""
        counts: dict[tuple[str, int], int] = {}
        for point in self.in_group(group):
            counts[point.model, point.tokens] = counts.get((point.model, point.tokens), 0) + 1
        return min(counts.values(), default=0)


def collect_results(sweep: Sweep) -> SweepResults:
    """Load every completed run; runs still going (or failed) are listed, not used."""
    results = SweepResults()
    for spec in sweep.runs:
        path = sweep.run_path(spec)
        if not is_complete(path, spec.train_iters):
            results.incomplete.append(spec.run_dir)
            continue
        if spec.role == STABLE:
            continue
        try:
            run = load_run(path)
        except RunError:
            results.incomplete.append(spec.run_dir)
            continue
        tokens, loss = run.final_val
        results.points.append(Point(spec.model, spec.group, tokens, loss, spec.lr,
                                    method_of(sweep, spec), spec.run_dir))
        results.runs[spec.run_dir] = run
    return results
