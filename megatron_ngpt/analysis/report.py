"""Markdown for the comparison: speedup tables, final losses, the summary over precisions and
contexts, and the caveats that go with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from megatron_ngpt.analysis.results import Group, Point
from megatron_ngpt.analysis.speedup import Reach, SpeedupRow
from megatron_ngpt.analysis.tokens import format_tokens

ONE_RUN_CAVEAT = ("Caveat: each point is one run, one seed at one learning rate. The speedup also "
                  "measures how well that rate suits each model, and run-to-run noise; sweep "
                  "learning rates (tools/sweep.py --lrs) and seeds before trusting it.")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Words:
    """How a table speaks of its points: a sweep's budgets, or two runs' validation curves."""

    tokens: str
    loss: str
    reached: str
    inside: str
    below: str  # the candidate's measured range starts after the loss is reached
    above: str
    method: str
    not_monotone: str


def _sweep_words(baseline: str, candidate: str) -> _Words:
    return _Words(
        f"{baseline} budget", f"{baseline} final val loss", f"{candidate} tokens to same loss",
        "interpolated", f"beyond {candidate}'s smallest budget",
        f"beyond {candidate}'s largest budget",
        f"Speedup = {baseline} tokens / {candidate} tokens at equal final validation loss; "
        f"{candidate}'s final losses are interpolated linearly in log(tokens).",
        f"Warning: {candidate}'s final loss does not fall monotonically with the budget (noise "
        "or a diverged run); the first crossing is used.")


def _curve_words(baseline: str, candidate: str) -> _Words:
    return _Words(
        f"{baseline} tokens", f"{baseline} val loss", f"{candidate} tokens to same val loss",
        "between validations", f"before {candidate}'s first validation",
        f"after {candidate}'s last validation",
        f"Speedup = {baseline} tokens / {candidate} tokens at equal validation loss, read off the "
        "two runs' validation curves (straight in log(tokens) between validations). Rough: a "
        "point inside a run is not the end of a schedule; tools/sweep.py trains complete runs "
        "of several lengths for the paper's estimate.",
        f"Warning: {candidate}'s validation loss does not fall monotonically; the first "
        "crossing is used.")


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _reach_cells(row: SpeedupRow, words: _Words) -> tuple[str, str, str]:
    """(tokens cell, ratio cell, how) with extrapolations spelled out as bounds."""
    reach = row.candidate
    if reach.reach is Reach.INTERPOLATED:
        return format_tokens(reach.tokens), _ratio(row.ratio), words.inside
    below = reach.reach is Reach.BELOW_RANGE
    side, ratio_side = ("<", ">") if below else (">", "<")
    tokens = f"{side} {format_tokens(reach.bound)}"
    ratio = f"{ratio_side} {_ratio(row.ratio_bound)}"
    if reach.tokens is not None:
        tokens += f" (~{format_tokens(reach.tokens)})"
        ratio += f" (~{_ratio(row.ratio)})"
    return tokens, ratio, f"EXTRAPOLATED: {words.below if below else words.above}"


def speedup_markdown(rows: Sequence[SpeedupRow], baseline: str, candidate: str,
                     curves: bool = False, one_run_per_point: bool = True) -> str:
    """The speedup table: per baseline point, the candidate's tokens to the same loss. `curves`:
    the points are validations inside two single runs, not a sweep's budgets."""
    words = (_curve_words if curves else _sweep_words)(baseline, candidate)
    body = []
    for row in rows:
        tokens, ratio, how = _reach_cells(row, words)
        body.append([format_tokens(row.baseline_tokens), f"{row.baseline_loss:.4f}", tokens,
                     ratio, how])
    table = markdown_table([words.tokens, words.loss, words.reached, "speedup", "how"], body)
    notes = [words.method]
    if rows and not rows[0].candidate.monotone:
        notes.append(words.not_monotone)
    if one_run_per_point:
        notes.append(ONE_RUN_CAVEAT)
    return table + "\n" + "\n\n".join(notes) + "\n"


def ratio_cell(row: SpeedupRow) -> str:
    """A compact speedup for the summary: the value, or the measured bound of an extrapolation."""
    if row.candidate.reach is Reach.INTERPOLATED:
        return _ratio(row.ratio)
    side = ">" if row.candidate.reach is Reach.BELOW_RANGE else "<"
    return f"{side} {_ratio(row.ratio_bound)} (extrapolated)"


def summary_markdown(tables: dict[Group, list[SpeedupRow]], baseline: str) -> str:
    """Speedup by precision x context (rows) x baseline budget (columns)."""
    budgets = sorted({row.baseline_tokens for rows in tables.values() for row in rows})
    body = []
    for group, rows in tables.items():
        cells = {row.baseline_tokens: ratio_cell(row) for row in rows}
        precision, context = group
        body.append([str(precision or "-"), str(context or "-"),
                     *(cells.get(b, "-") for b in budgets)])
    return markdown_table(["precision", "context",
                           *(f"{baseline} {format_tokens(b)}" for b in budgets)], body)


def final_losses_markdown(points: Sequence[Point], chosen: set[str]) -> str:
    """One row per completed run; `chosen` (run dirs) are the points the speedup uses."""
    rows = [[p.model, format_tokens(p.tokens), "-" if p.lr is None else f"{p.lr:g}",
             f"{p.loss:.4f}", p.method, "yes" if p.run_dir in chosen else "", p.run_dir]
            for p in sorted(points, key=lambda p: (p.model, p.tokens, p.lr or 0))]
    return markdown_table(["model", "tokens", "lr", "final val loss", "method", "used",
                           "run"], rows)


def edge_warnings(points: Sequence[Point], best: dict[str, list[Point]]) -> list[str]:
    """Best rates at the edge of the grid tried: a better one may lie outside it."""
    warnings = []
    for model, chosen in best.items():
        for point in chosen:
            tried = sorted(p.lr for p in points if (p.model, p.tokens) == (model, point.tokens)
                           and p.lr is not None)
            if len(tried) > 1 and point.lr in (tried[0], tried[-1]):
                edge = "smallest" if point.lr == tried[0] else "largest"
                warnings.append(f"{model} {format_tokens(point.tokens)}: the best rate "
                                f"{point.lr:g} is the {edge} tried")
    return warnings
