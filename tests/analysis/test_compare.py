"""tools/plot_runs.py's work on fake runs: plots, the sweep's speedup table, the report."""

from pathlib import Path

import pytest

from megatron_ngpt.analysis.compare import LOSS_PLOT, REPORT, SWEEP_PLOT, compare
from megatron_ngpt.analysis.speedup import Reach
from megatron_ngpt.experiments.manifest import write_manifest
from megatron_ngpt.experiments.sweep import plan_sweep
from tests.analysis.fake_runs import write_run

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
STEP = 16 * 128
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sweep_dir(tmp_path):
    """A finished sweep in which nGPT needs 4x fewer tokens than GPT-2 for the same loss."""
    sweep = plan_sweep(["ngpt", "gpt2"], [s * STEP for s in (25, 50, 100, 200, 400)],
                       {"ngpt": TINY / "ngpt.yaml", "gpt2": TINY / "gpt2.yaml"},
                       tmp_path / "sweep")
    write_manifest(sweep)
    for run in sweep.runs:
        if (run.model, run.budget) != ("gpt2", 400 * STEP):  # still running: left out
            write_run(sweep.run_path(run), run.model, run.train_iters, STEP,
                      speedup=4.0 if run.model == "ngpt" else 1.0)
    return sweep.root


def test_sweep_speedup_table_and_plots(sweep_dir, tmp_path):
    result = compare([], tmp_path / "out", sweep_dir)
    interpolated = [r for r in result.rows if r.candidate.reach is Reach.INTERPOLATED]
    assert [r.baseline_tokens for r in interpolated] == [100 * STEP, 200 * STEP]
    assert all(r.ratio == pytest.approx(4.0) for r in interpolated)
    # small GPT budgets: nGPT's smallest run is already better, so only a bound is known
    assert [r.candidate.reach for r in result.rows[:2]] == [Reach.BELOW_RANGE] * 2
    for name in (LOSS_PLOT, SWEEP_PLOT):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC
    report = (tmp_path / "out" / REPORT).read_text()
    assert report == result.markdown
    assert "| 204.8K | " in report and "4.00x | interpolated |" in report
    assert report.count("EXTRAPOLATED") == 2 and "gpt2_819200" in report  # the incomplete run


def test_two_single_runs_give_a_curve_estimate(tmp_path):
    runs = [write_run(tmp_path / "a", "gpt2", 40, STEP),
            write_run(tmp_path / "b", "ngpt", 40, STEP, speedup=4.0)]
    result = compare(runs, tmp_path / "out")
    assert "from validation curves" in result.markdown
    assert result.rows and (tmp_path / "out" / LOSS_PLOT).read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "out" / SWEEP_PLOT).exists()


def test_plot_runs_command_line(sweep_dir, tmp_path, capsys):
    from megatron_ngpt.cli.plot_runs import main

    assert main(["--sweep", str(sweep_dir / "sweep.json"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "Speedup of ngpt over gpt2" in out and f"wrote {tmp_path / 'o' / SWEEP_PLOT}" in out
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err
