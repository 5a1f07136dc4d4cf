"""Everything `tools/plot_runs.py` produces: plots of runs, a sweep's curves, the speedup table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_ngpt.analysis.plots import plot_final_losses, plot_loss_curves
from megatron_ngpt.analysis.report import final_losses_markdown, speedup_markdown
from megatron_ngpt.analysis.results import collect_results
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
    rows: list[SpeedupRow] = field(default_factory=list)


def _val_points(run: Run) -> list[tuple[int, float]]:
    return [(t, loss) for t, loss in zip(run.val.tokens, run.val.losses, strict=True) if t > 0]


def _single_run_of(runs: Sequence[Run], arch: str) -> Run | None:
    matching = [run for run in runs if run.arch == arch]
    return matching[0] if len(matching) == 1 else None


def curve_speedup(baseline: Run, candidate: Run) -> list[SpeedupRow]:
    """The same math on the validation curves of two single runs: a quick, rougher estimate
    (intermediate points of a run are not the end of a schedule)."""
    return speedup_table(_val_points(baseline), _val_points(candidate))


def compare(run_dirs: Sequence[str | Path], out: str | Path, sweep: str | Path | None = None,
            baseline: str = "gpt2", candidate: str = "ngpt") -> Comparison:
    """Plot the runs (or the sweep's runs when none are given); with a sweep, also its
    final-loss curves and the speedup table. Writes PNGs and a markdown report into `out`."""
    out = Path(out)
    runs = [load_run(path) for path in run_dirs]
    result = Comparison()
    sections = []
    if sweep is not None:
        results = collect_results(load_manifest(sweep))
        if not runs:
            runs = [run for model_runs in results.runs.values() for run in model_runs]
        if results.finals.get(baseline) and results.finals.get(candidate):
            result.rows = speedup_table(results.finals[baseline], results.finals[candidate])
            sections.append(f"## Speedup of {candidate} over {baseline} (token-budget sweep)\n\n"
                            + speedup_markdown(result.rows, baseline, candidate))
        else:
            sections.append(f"No speedup: the sweep needs completed runs of both {baseline} "
                            f"and {candidate}.\n")
        sections.append("## Final validation losses\n\n" + final_losses_markdown(results.finals))
        if results.incomplete:
            sections.append("Not complete (left out): " + ", ".join(results.incomplete) + "\n")
        result.files.append(plot_final_losses(results.finals, out / SWEEP_PLOT, result.rows))
    else:
        base_run, cand_run = _single_run_of(runs, baseline), _single_run_of(runs, candidate)
        if base_run and cand_run and _val_points(base_run) and _val_points(cand_run):
            result.rows = curve_speedup(base_run, cand_run)
            sections.append(
                f"## Speedup of {candidate} over {baseline} (from validation curves)\n\n"
                "Rough: points inside a run are not ends of a schedule; a budget sweep "
                "(tools/sweep.py) gives the paper's estimate.\n\n"
                + speedup_markdown(result.rows, baseline, candidate))
    if runs:
        result.files.insert(0, plot_loss_curves(runs, out / LOSS_PLOT))
    result.markdown = "\n".join(sections)
    if result.markdown:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT).write_text(result.markdown)
        result.files.append(out / REPORT)
    return result
