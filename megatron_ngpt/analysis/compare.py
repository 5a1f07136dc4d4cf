"""Everything `tools/plot_runs.py` produces: plots of runs, a sweep's curves, the speedup tables.

A sweep is reported per (precision, context): its final-loss-vs-tokens plot, speedup table and
final losses (every run, the ones used marked); with more than one group, a summary of the speedup
by precision x context x budget comes first and the files carry the group in their names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_ngpt.analysis.plots import final_losses_figure, loss_curves_figure, save_figure
from megatron_ngpt.analysis.report import (
    ONE_RUN_CAVEAT,
    edge_warnings,
    final_losses_markdown,
    speedup_markdown,
    summary_markdown,
)
from megatron_ngpt.analysis.results import Group, SweepResults, collect_results, group_label
from megatron_ngpt.analysis.runs import Run, load_run
from megatron_ngpt.analysis.speedup import SpeedupRow, speedup_table
from megatron_ngpt.experiments.manifest import load_manifest

LOSS_PLOT = "loss_curves.png"
SWEEP_PLOT = "final_loss_vs_tokens.png"
REPORT = "speedup.md"


@dataclass
class Comparison:
    markdown: str = ""
    files: list[Path] = field(default_factory=list)
    rows: list[SpeedupRow] = field(default_factory=list)  # the only group's (or the two runs')
    tables: dict[Group, list[SpeedupRow]] = field(default_factory=dict)  # a sweep's, per group


def _val_points(run: Run) -> list[tuple[int, float]]:
    return [(t, loss) for t, loss in zip(run.val.tokens, run.val.losses, strict=True) if t > 0]


def _single_run_of(runs: Sequence[Run], arch: str) -> Run | None:
    matching = [run for run in runs if run.arch == arch]
    return matching[0] if len(matching) == 1 else None


def curve_speedup(baseline: Run, candidate: Run) -> list[SpeedupRow]:
    """The same math on the validation curves of two single runs: a quick, rougher estimate
    (intermediate points of a run are not the end of a schedule)."""
    return speedup_table(_val_points(baseline), _val_points(candidate))


def group_file(name: str, group: Group, several: bool) -> str:
    """`name`, or with several groups `name` with the group in it (``..._bf16_seq1024.png``)."""
    if not several:
        return name
    stem, suffix = name.rsplit(".", 1)
    precision, context = group
    return f"{stem}_{precision}_seq{context}.{suffix}"


def _group_sections(results: SweepResults, group: Group, several: bool, out: Path,
                    result: Comparison, baseline: str, candidate: str, plot_curves: bool
                    ) -> list[str]:
    level = "###" if several else "##"
    finals, best = results.finals(group), results.best(group)
    one_run = results.learning_rates_per_point(group) == 1
    rows: list[SpeedupRow] = []
    if finals.get(baseline) and finals.get(candidate):
        rows = result.tables[group] = speedup_table(finals[baseline], finals[candidate])
        speedup = (f"{level} Speedup of {candidate} over {baseline} (token-budget sweep)\n\n"
                   + speedup_markdown(rows, baseline, candidate, one_run_per_point=one_run))
        if not one_run:
            speedup += ("\nEach point is the run with the best final validation loss among the "
                        "learning rates tried (one seed each); every run is listed below.\n")
        speedup += "".join(f"\nWarning: {w}; a better one may lie outside the grid.\n"
                           for w in edge_warnings(results.in_group(group), best))
    else:
        speedup = (f"No speedup: the sweep needs completed runs of both {baseline} and "
                   f"{candidate}.\n")
    chosen = {p.run_dir for points in best.values() for p in points}
    others: dict[str, list[tuple[int, float]]] = {}
    for p in results.in_group(group):
        if p.run_dir not in chosen:
            others.setdefault(p.model, []).append((p.tokens, p.loss))
    title = group_label(group) if several else ""
    result.files.append(save_figure(final_losses_figure(finals, rows, others, title),
                                    out / group_file(SWEEP_PLOT, group, several)))
    if plot_curves:
        pairs = [(model, results.runs[p.run_dir]) for model, points in best.items()
                 for p in points]
        result.files.append(save_figure(loss_curves_figure(pairs),
                                        out / group_file(LOSS_PLOT, group, several)))
    if not several:
        result.rows = rows
    head = [f"## {group_label(group)}\n"] if several else []
    return [*head, speedup, f"{level} Final validation losses\n\n"
            + final_losses_markdown(results.in_group(group), chosen)]


def _sweep_sections(sweep_path: str | Path, out: Path, result: Comparison, baseline: str,
                    candidate: str, plot_curves: bool) -> list[str]:
    results = collect_results(load_manifest(sweep_path))
    groups = results.groups()
    several = len(groups) > 1
    sections = []
    for group in groups:
        sections += _group_sections(results, group, several, out, result, baseline, candidate,
                                    plot_curves)
    if several and result.tables:
        methods = sorted({p.method for p in results.points})
        notes = [f"Each cell: {baseline}'s budget / {candidate}'s tokens to the same final "
                 f"validation loss, within one precision and context ({', '.join(methods)}); "
                 f"an extrapolated cell gives the bound that {candidate}'s measured budgets "
                 "support."]
        if any(results.learning_rates_per_point(g) == 1 for g in result.tables):
            notes.append(ONE_RUN_CAVEAT)
        sections.insert(0, f"## Speedup of {candidate} over {baseline} by precision, context "
                           "and budget\n\n" + summary_markdown(result.tables, baseline) + "\n"
                        + "\n\n".join(notes) + "\n")
    if not groups:
        sections.append("No completed runs yet.\n")
    if results.incomplete:
        sections.append("Not complete (left out): " + ", ".join(results.incomplete) + "\n")
    return sections


def _curve_sections(runs: Sequence[Run], result: Comparison, baseline: str,
                    candidate: str) -> list[str]:
    base_run, cand_run = _single_run_of(runs, baseline), _single_run_of(runs, candidate)
    if not (base_run and cand_run and _val_points(base_run) and _val_points(cand_run)):
        return []
    result.rows = curve_speedup(base_run, cand_run)
    return [f"## Speedup of {candidate} over {baseline} (from validation curves)\n\n"
            + speedup_markdown(result.rows, baseline, candidate, curves=True)]


def compare(run_dirs: Sequence[str | Path], out: str | Path, sweep: str | Path | None = None,
            baseline: str = "gpt2", candidate: str = "ngpt") -> Comparison:
    """Plot the runs; with a sweep, also its final-loss curves and speedup tables per
    (precision, context) and the loss curves of the runs used (when no runs are given).
    Without a sweep, two runs of the two models give a rough estimate from their validation
    curves. Writes PNGs and a markdown report into `out`."""
    out = Path(out)
    runs = [load_run(path) for path in run_dirs]
    result = Comparison()
    if sweep is not None:
        sections = _sweep_sections(sweep, out, result, baseline, candidate, not runs)
    else:
        sections = _curve_sections(runs, result, baseline, candidate)
    if runs:
        result.files.insert(0, save_figure(
            loss_curves_figure([(run.arch or run.name, run) for run in runs]), out / LOSS_PLOT))
    result.markdown = "\n".join(sections)
    if result.markdown:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT).write_text(result.markdown)
        result.files.append(out / REPORT)
    return result
