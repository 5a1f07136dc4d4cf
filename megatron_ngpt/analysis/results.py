"""The final validation losses of a sweep's runs, per model, as the speedup method needs them."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_ngpt.analysis.runs import Run, RunError, is_complete, load_run
from megatron_ngpt.experiments.manifest import Sweep


@dataclass
class SweepResults:
    # model -> [(tokens trained, final validation loss)], by tokens
    finals: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    runs: dict[str, list[Run]] = field(default_factory=dict)  # model -> completed runs
    incomplete: list[str] = field(default_factory=list)  # run dirs without a final validation


def collect_results(sweep: Sweep) -> SweepResults:
    """Load every completed run; runs still going (or failed) are listed, not used."""
    results = SweepResults({m: [] for m in sweep.models}, {m: [] for m in sweep.models})
    for spec in sweep.runs:
        path = sweep.run_path(spec)
        if not is_complete(path, spec.train_iters):
            results.incomplete.append(spec.run_dir)
            continue
        try:
            run = load_run(path)
        except RunError:
            results.incomplete.append(spec.run_dir)
            continue
        results.finals[spec.model].append(run.final_val)
        results.runs[spec.model].append(run)
    for finals in results.finals.values():
        finals.sort()
    return results
