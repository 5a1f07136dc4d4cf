"""tools/plot_runs.py's work on fake runs with a known answer: plots, the speedup tables per
(precision, context), the summary over them, the learning rate picked, the report's words."""

import json
import re
from pathlib import Path

import pytest
from matplotlib.transforms import Bbox

from megatron_ngpt.analysis.compare import LOSS_PLOT, REPORT, SWEEP_PLOT, compare
from megatron_ngpt.analysis.plots import (
    SPEEDUP_LABEL,
    final_losses_figure,
    loss_curves_figure,
    model_color,
)
from megatron_ngpt.analysis.report import ONE_RUN_CAVEAT
from megatron_ngpt.analysis.runs import load_run
from megatron_ngpt.analysis.speedup import Reach, speedup_table
from megatron_ngpt.experiments.manifest import write_manifest
from megatron_ngpt.experiments.sweep import WsdSettings, plan_sweep
from tests.analysis.fake_runs import power_law, write_run, write_sweep_runs

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny"
CONFIGS = {"ngpt": TINY / "ngpt.yaml", "gpt2": TINY / "gpt2.yaml"}
STEP = 16 * 128
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUDGETS = [s * STEP for s in (25, 50, 100, 200, 400)]


def _finished_sweep(root: Path, speedup, offset=lambda run: 0.0, skip=lambda run: False,
                    **axes) -> Path:
    sweep = plan_sweep(["ngpt", "gpt2"], BUDGETS, CONFIGS, root, **axes)
    write_manifest(sweep)
    write_sweep_runs(sweep, speedup, offset, skip)
    return sweep.root


@pytest.fixture
def sweep_dir(tmp_path):
    """A finished sweep in which nGPT needs 4x fewer tokens than GPT-2 for the same loss."""
    return _finished_sweep(tmp_path / "sweep", lambda run: 4.0 if run.model == "ngpt" else 1.0,
                           skip=lambda run: (run.model, run.budget) == ("gpt2", 400 * STEP))


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
    assert report.count("EXTRAPOLATED") == 2
    assert "Not complete (left out): gpt2_fp32_seq128_lr3e-3_819.2K" in report
    assert ONE_RUN_CAVEAT in report  # one learning rate per point
    assert "precision x context" not in report and "by precision" not in report  # one group


def test_summary_over_precisions_and_contexts_with_the_best_learning_rates(tmp_path):
    """nGPT's speedup is 2x in fp32, 8x in bf16 at context 64 and 4x in bf16 at 128; of its two
    learning rates 2e-2 is the better one (the other's losses are 0.3 higher), and GPT-2's
    worse rate (3e-3, 0.2 higher) must not be used either."""
    truth = {("fp32", 64): 2.0, ("fp32", 128): 2.0, ("bf16", 64): 8.0, ("bf16", 128): 4.0}
    worse = {"ngpt": 1e-2, "gpt2": 3e-3}
    root = _finished_sweep(
        tmp_path / "sweep", lambda run: truth[run.group] if run.model == "ngpt" else 1.0,
        offset=lambda run: 0.3 if run.lr == worse[run.model] else 0.0,
        precisions=["fp32", "bf16"], contexts=[64, 128],
        lrs={"ngpt": [1e-2, 2e-2], "gpt2": [1e-3, 3e-3]})
    result = compare([], tmp_path / "out", root)
    assert set(result.tables) == set(truth)
    for group, rows in result.tables.items():
        inside = [r for r in rows if r.candidate.reach is Reach.INTERPOLATED]
        assert inside and all(r.ratio == pytest.approx(truth[group]) for r in inside)
    summary = result.markdown.split("\n## ")[0]
    assert summary.startswith("## Speedup of ngpt over gpt2 by precision, context and budget")
    assert "| bf16 | 128 | > 1.00x (extrapolated) | > 2.00x (extrapolated) | 4.00x | 4.00x |" \
        in summary
    assert "| fp32 | 64 |" in summary and "2.00x | 2.00x |" in summary
    assert ONE_RUN_CAVEAT not in result.markdown  # every point had two learning rates
    # the runs used are those of the better rates; every run is listed with its method
    bf16_128 = result.markdown.split("## bf16, context 128")[1].split("\n## ")[0]
    used = re.findall(r"^\| (\w+) \| [\d.]+K \| ([\d.e-]+) \| [\d.]+ \| cosine \| yes \|",
                      bf16_128, re.MULTILINE)
    assert len(used) == 10 and {lr for _, lr in used} == {"0.02", "0.001"}
    assert bf16_128.count("| cosine |") == 20
    for precision, context in truth:
        for name in (SWEEP_PLOT, LOSS_PLOT):
            stem, suffix = name.split(".")
            path = tmp_path / "out" / f"{stem}_{precision}_seq{context}.{suffix}"
            assert path.read_bytes()[:8] == PNG_MAGIC


def test_caveat_when_a_point_has_one_learning_rate(tmp_path):
    root = _finished_sweep(tmp_path / "sweep", lambda run: 2.0 if run.model == "ngpt" else 1.0,
                           lrs={"ngpt": [1e-2, 2e-2]})  # GPT-2 at its config's rate only
    assert ONE_RUN_CAVEAT in compare([], tmp_path / "out", root).markdown


def test_wsd_sweep_reports_its_cooldowns(tmp_path):
    """Cooldowns give the points (method named); stable runs give none and are not missing."""
    root = _finished_sweep(tmp_path / "sweep", lambda run: 2.0 if run.model == "ngpt" else 1.0,
                           wsd=WsdSettings(0.2, "1-sqrt"))
    result = compare([], tmp_path / "out", root)
    inside = [r for r in result.rows if r.candidate.reach is Reach.INTERPOLATED]
    assert inside and all(r.ratio == pytest.approx(2.0) for r in inside)
    assert result.markdown.count("| WSD cooldown (1-sqrt, last 20%) | yes |") == 10
    assert "stable" not in result.markdown and "Not complete" not in result.markdown


def test_one_colour_per_model_in_every_figure(sweep_dir):
    runs = [(model, load_run(sweep_dir / f"{model}_fp32_seq128_lr{lr}_{size}"))
            for model, lr in (("gpt2", "3e-3"), ("ngpt", "2e-2"))
            for size in ("51.2K", "102.4K")]
    finals = {"ngpt": [(t, power_law(t, 4.0)) for t in BUDGETS],
              "gpt2": [(t, power_law(t)) for t in BUDGETS]}
    others = {"ngpt": [(BUDGETS[0], 9.0)], "gpt2": [(BUDGETS[1], 9.0)]}
    figures = [loss_curves_figure(runs), final_losses_figure(finals, (), others),
               final_losses_figure({"gpt2": finals["gpt2"], "ngpt": finals["ngpt"]})]
    colours: dict[str, set[str]] = {"ngpt": set(), "gpt2": set()}
    for fig in figures:
        for ax in fig.axes:
            for line in ax.get_lines():
                model = "ngpt" if "ngpt" in line.get_label() else "gpt2"
                colours[model].add(line.get_color())
    assert colours == {"ngpt": {model_color("ngpt")}, "gpt2": {model_color("gpt2")}}
    assert model_color("ngpt") != model_color("gpt2")


def _marker_extents(ax) -> list[Bbox]:
    boxes = []
    for line in ax.get_lines():
        if line.get_marker() in ("None", "", " ", None):
            continue
        radius = line.get_markersize() / 2 * ax.figure.dpi / 72
        for x, y in ax.transData.transform(line.get_xydata()):
            boxes.append(Bbox([[x - radius, y - radius], [x + radius, y + radius]]))
    return boxes


def test_speedup_labels_do_not_cover_markers():
    """Speedups near 1 give short arrows: a label on the arrow would cover both ends."""
    budgets = [s * STEP for s in (25, 35, 50, 70, 100, 140, 200)]
    finals = {"gpt2": [(t, power_law(t)) for t in budgets],
              "ngpt": [(t, power_law(t, 1.08)) for t in budgets]}
    rows = speedup_table(finals["gpt2"], finals["ngpt"])
    fig = final_losses_figure(finals, rows)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_gid() == SPEEDUP_LABEL]
    assert len(labels) == sum(r.candidate.reach is Reach.INTERPOLATED for r in rows) == 6
    markers = _marker_extents(ax)
    boxes = [label.get_window_extent(renderer) for label in labels]
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(m) for m in markers), labels[i].get_text()
        assert not any(box.overlaps(other) for other in boxes[i + 1:]), labels[i].get_text()


def test_two_single_runs_give_a_curve_estimate_without_budget_words(tmp_path):
    runs = [write_run(tmp_path / "a", "gpt2", 40, STEP),
            write_run(tmp_path / "b", "ngpt", 40, STEP, speedup=4.0)]
    result = compare(runs, tmp_path / "out")
    assert "from validation curves" in result.markdown
    assert "budget" not in result.markdown.lower()
    assert "interpolat" not in result.markdown.lower()
    assert ONE_RUN_CAVEAT in result.markdown
    assert result.rows and (tmp_path / "out" / LOSS_PLOT).read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "out" / SWEEP_PLOT).exists()


def test_tables_name_runs_by_the_tokens_their_folders_say(tmp_path):
    """Budgets of 64K and 128K tokens train 32 and 63 steps of 2048 (65.54K and 129K tokens):
    the folders and the table rows say the same."""
    sweep = plan_sweep(["ngpt", "gpt2"], [64_000, 128_000], CONFIGS, tmp_path / "sweep")
    write_manifest(sweep)
    write_sweep_runs(sweep, lambda run: 1.0)
    markdown = compare([], tmp_path / "out", sweep.root).markdown
    for run in sweep.runs:
        size = run.run_dir.rsplit("_", 1)[1]
        assert re.search(rf"^\| {run.model} \| {re.escape(size)} \|.*\| {run.run_dir} \|$",
                         markdown, re.MULTILINE), run.run_dir
        assert f"| {size} |" in markdown.split("## Final")[0] or run.model == "ngpt"


def test_version_1_sweep_is_reported(tmp_path):
    runs = [{"model": m, "budget": b, "run_dir": f"{m}_{b}", "config": "c.yaml", "overrides": [],
             "train_iters": b // STEP, "warmup_steps": 0, "job_id": None}
            for m in ("ngpt", "gpt2") for b in BUDGETS[:3]]
    (tmp_path / "sweep.json").write_text(json.dumps({
        "version": 1, "models": ["ngpt", "gpt2"], "budgets": BUDGETS[:3], "extra_args": [],
        "runs": runs}))
    for run in runs:
        write_run(tmp_path / run["run_dir"], run["model"], run["train_iters"], STEP,
                  2.0 if run["model"] == "ngpt" else 1.0)
    result = compare([], tmp_path / "out", tmp_path)
    assert any(r.ratio == pytest.approx(2.0) for r in result.rows
               if r.candidate.reach is Reach.INTERPOLATED)
    assert "| ngpt | 51.2K | - |" in result.markdown and "complete run" in result.markdown


def test_plot_runs_command_line(sweep_dir, tmp_path, capsys):
    from megatron_ngpt.cli.plot_runs import main

    assert main(["--sweep", str(sweep_dir / "sweep.json"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "Speedup of ngpt over gpt2" in out and f"wrote {tmp_path / 'o' / SWEEP_PLOT}" in out
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err
