"""Markdown for the comparison: the speedup table and the table of final losses."""

from __future__ import annotations

from collections.abc import Sequence

from megatron_ngpt.analysis.speedup import Reach, SpeedupRow
from megatron_ngpt.analysis.tokens import format_tokens


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _reach_cells(row: SpeedupRow, candidate: str) -> tuple[str, str, str]:
    """(tokens cell, ratio cell, how) with extrapolations spelled out as bounds."""
    reach = row.candidate
    if reach.reach is Reach.INTERPOLATED:
        return format_tokens(reach.tokens), _ratio(row.ratio), "interpolated"
    side, ratio_side = ("<", ">") if reach.reach is Reach.BELOW_RANGE else (">", "<")
    edge = "smallest" if reach.reach is Reach.BELOW_RANGE else "largest"
    tokens = f"{side} {format_tokens(reach.bound)}"
    ratio = f"{ratio_side} {_ratio(row.ratio_bound)}"
    if reach.tokens is not None:
        tokens += f" (~{format_tokens(reach.tokens)})"
        ratio += f" (~{_ratio(row.ratio)})"
    how = f"EXTRAPOLATED: beyond {candidate}'s {edge} budget"
    return tokens, ratio, how


def speedup_markdown(rows: Sequence[SpeedupRow], baseline: str, candidate: str) -> str:
    """The speedup table: per baseline budget, the candidate's tokens to the same loss."""
    body = []
    for row in rows:
        tokens, ratio, how = _reach_cells(row, candidate)
        body.append([format_tokens(row.baseline_tokens), f"{row.baseline_loss:.4f}", tokens,
                     ratio, how])
    table = markdown_table(
        [f"{baseline} tokens", f"{baseline} val loss", f"{candidate} tokens to same loss",
         "speedup", "how"], body)
    notes = [
        f"Speedup = {baseline} tokens / {candidate} tokens at equal final validation loss; "
        f"{candidate}'s final losses are interpolated linearly in log(tokens)."
    ]
    if rows and not rows[0].candidate.monotone:
        notes.append(f"Warning: {candidate}'s final loss does not fall monotonically with the "
                     "budget (noise or a diverged run); the first crossing is used.")
    return table + "\n" + "\n".join(notes) + "\n"


def final_losses_markdown(finals: dict[str, list[tuple[int, float]]]) -> str:
    """One row per run: model, tokens trained, final validation loss."""
    rows = [[model, format_tokens(tokens), f"{loss:.4f}"]
            for model, points in finals.items() for tokens, loss in points]
    return markdown_table(["model", "tokens", "final val loss"], rows)
