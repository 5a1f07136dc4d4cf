"""The end-to-end demo: data, tokenizer, a tiny nGPT and GPT-2 on the same tokens, export,
lm-eval on a task made from the held-out text, and a report with the loss curves, the speedup
estimate and the eval table. `full` adds the precision axis (fp32 vs bf16-params) and two
learning rates per model, and the report's summary of the speedup by precision and budget.

Every stage is one of the project's own command-line tools (the report lists them, so each step
can be rerun by hand) and is skipped when it has already finished. Both models train on the same
held-out-validated data with a mini token-budget sweep (each budget a complete cosine schedule),
so the speedup estimate is the paper's method in miniature.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from megatron_ngpt.analysis.compare import LOSS_PLOT, SWEEP_PLOT, compare
from megatron_ngpt.analysis.report import markdown_table
from megatron_ngpt.analysis.runs import load_run
from megatron_ngpt.analysis.tokens import format_tokens
from megatron_ngpt.arguments import parse_train_args
from megatron_ngpt.config import Config, packaged_configs
from megatron_ngpt.data.demo_corpus import HELD_OUT_EVERY
from megatron_ngpt.eval.choice_task import CHOICES, ChoiceTaskShape
from megatron_ngpt.experiments.launch import describe, local_command, run_local
from megatron_ngpt.experiments.manifest import Sweep, write_manifest
from megatron_ngpt.experiments.stages import Stage, StageRunner
from megatron_ngpt.experiments.sweep import plan_sweep

TINY_CONFIGS = packaged_configs() / "tiny"
MODELS = ("ngpt", "gpt2")
HELD_OUT_TASK = "heldout_continuation"  # made from the held-out documents by the `tasks` stage
MIN_TASK_ITEMS = 200
FULL_PRECISIONS = ["fp32", "bf16-params"]
FULL_BUDGET_STEPS = (20, 40)  # --full: the default demo's 40-160 steps would take hours in bf16


def base_config(model: str) -> Config:
    return parse_train_args(["--config", str(TINY_CONFIGS / f"{model}.yaml")])


def tokens_per_step() -> int:
    """Tokens of one step of the tiny configs (both models train on the same batches)."""
    steps = {base_config(m).tokens_per_step for m in MODELS}
    if len(steps) != 1:
        raise ValueError(f"the tiny configs disagree on tokens per step: {sorted(steps)}")
    return steps.pop()


@dataclass
class DemoSettings:
    out: Path
    budgets: list[int]  # tokens per run; the largest is the headline comparison
    vocab_size: int = 4096
    nproc: int = 1
    eval_interval: int = 20
    eval_tasks: list[str] = field(default_factory=lambda: [HELD_OUT_TASK])
    tasks_dir: Path | None = None  # lm-eval task YAMLs (--include-path); None: the demo's own
    eval_limit: int | None = None
    quick: bool = False
    # --full: these training.precision values and these peak LRs per model (None: the config's)
    precisions: list[str] | None = None
    lrs: dict[str, list[float]] | None = None

    @classmethod
    def default(cls, out: Path, quick: bool = False, nproc: int = 1, full: bool = False,
                tasks: list[str] | None = None, tasks_dir: Path | None = None) -> DemoSettings:
        if tasks is None:
            tasks = local_tasks(tasks_dir) if tasks_dir else [HELD_OUT_TASK]
        step = tokens_per_step()
        if quick:  # a few steps per model: checks the plumbing, not the models
            settings = cls(Path(out), [2 * step, 4 * step], 1024, nproc, 2, tasks, tasks_dir,
                           eval_limit=8, quick=True)
        else:
            settings = cls(Path(out), [s * step for s in (40, 80, 160)], 4096, nproc, 16, tasks,
                           tasks_dir)
        if full:  # the config's (tuned) rate and half of it
            if not quick:  # bf16 matmuls without CPU support for bf16 run ~9x slower than fp32
                settings.budgets = [s * step for s in FULL_BUDGET_STEPS]
            settings.precisions = FULL_PRECISIONS
            tuned = {m: base_config(m).optimizer.lr for m in MODELS}
            settings.lrs = {m: [lr / 2, lr] for m, lr in tuned.items()}
        return settings


def local_tasks(tasks_dir: Path) -> list[str]:
    """Names of the lm-eval tasks whose YAMLs are in `tasks_dir` (no download needed)."""
    names = []
    for path in sorted(tasks_dir.glob("**/*.yaml")):
        match = re.search(r"^task:\s*['\"]?([\w.-]+)", path.read_text(), re.MULTILINE)
        if match:
            names.append(match.group(1))
    return names


class Demo:
    """The demo's files and stages for one output folder."""

    def __init__(self, settings: DemoSettings) -> None:
        self.s = settings
        out = settings.out.resolve()
        self.out, self.data = out, out / "data"
        self.corpus, self.held_out = self.data / "corpus.jsonl", self.data / "heldout.jsonl"
        self.tokenizer = self.data / "tokenizer.model"
        self.train_prefix = self.data / "train_text_document"
        self.valid_prefix = self.data / "valid_text_document"
        self.tasks_dir = settings.tasks_dir or self.data / "tasks"
        self.report = out / "REPORT.md"
        self.sweep = self._plan_sweep()

    def _tool(self, name: str, *args: str | Path) -> list[str]:
        """A stage command: one of the package's command-line tools (`megatron_ngpt.cli`)."""
        return [sys.executable, "-m", f"megatron_ngpt.cli.{name}", *map(str, args)]

    def _plan_sweep(self) -> Sweep:
        trainer_args = [
            f"data.train_data_path={self.train_prefix}",
            f"data.valid_data_path={self.valid_prefix}",
            f"training.eval_interval={self.s.eval_interval}", "logging.log_interval=10",
            "--tokenizer-model", str(self.tokenizer), "--device", "cpu", "--no-progress-bar"]
        return plan_sweep(list(MODELS), self.s.budgets,
                          {m: TINY_CONFIGS / f"{m}.yaml" for m in MODELS},
                          self.out / "sweep", trainer_args, precisions=self.s.precisions,
                          lrs=self.s.lrs)

    def main_run(self, model: str) -> Path:
        """The largest-budget run of `model` at its config's precision and LR: the one plotted,
        exported and evaluated."""
        base = base_config(model)
        run = max((r for r in self.sweep.runs if r.model == model
                   and r.precision == base.training.precision and r.lr == base.optimizer.lr),
                  key=lambda r: r.budget)
        return self.sweep.run_path(run)

    def hf_dir(self, model: str) -> Path:
        return self.out / "hf" / model

    def eval_dir(self, model: str) -> Path:
        return self.out / "eval" / model

    def train_commands(self) -> list[str]:
        return [describe(local_command(self.sweep, run, self.s.nproc)) for run in self.sweep.runs]

    def _train(self) -> None:
        write_manifest(self.sweep)
        run_local(self.sweep, self.s.nproc)

    def stages(self, write_report: Callable[[], None]) -> list[Stage]:
        d = self
        preprocess = ["--json-keys", "text", "--tokenizer-model", d.tokenizer, "--workers", "2"]
        stages = [
            Stage("corpus", [d.corpus, d.held_out], [d._tool(
                "make_demo_corpus", "--output", d.corpus, "--held-out", d.held_out)]),
            Stage("tokenizer", [d.tokenizer], [d._tool(
                "train_tokenizer", "--input", d.corpus, "--vocab-size", str(d.s.vocab_size),
                "--output-prefix", d.tokenizer.with_suffix(""))]),
            Stage("preprocess", [d.train_prefix.with_suffix(".bin"),
                                 d.valid_prefix.with_suffix(".bin")], [
                d._tool("preprocess_data", "--input", d.corpus, *preprocess, "--output-prefix",
                        d.data / "train", "--quiet"),
                d._tool("preprocess_data", "--input", d.held_out, *preprocess,
                        "--output-prefix", d.data / "valid", "--quiet")]),
            Stage("train", [d.sweep.manifest_path, *(d.main_run(m) for m in MODELS)],
                  action=d._train),
            Stage("export", [d.hf_dir(m) / "config.json" for m in MODELS], [d._tool(
                "checkpoint_to_hf", "--checkpoint", d.main_run(m), "--output", d.hf_dir(m),
                "--dtype", "fp32", "--overwrite") for m in MODELS]),
        ]
        if d.s.tasks_dir is None:
            stages.insert(3, Stage("tasks", [d.tasks_dir / f"{HELD_OUT_TASK}.yaml"], [d._tool(
                "make_choice_task", "--input", d.held_out, "--output-dir", d.tasks_dir,
                "--name", HELD_OUT_TASK, "--min-items", str(MIN_TASK_ITEMS))]))
        if d.s.eval_tasks:
            limit = ["--limit", str(d.s.eval_limit)] if d.s.eval_limit else []
            stages.append(Stage("eval", [d.eval_dir(m) / "results.json" for m in MODELS], [
                d._tool("eval", "--model", d.hf_dir(m), "--tasks", ",".join(d.s.eval_tasks),
                        "--include-path", d.tasks_dir, "--output", d.eval_dir(m), *limit)
                for m in MODELS]))
        stages.append(Stage("report", [d.report], action=write_report, always=True))
        return stages


def _readable(command: str) -> str:
    """A command line as a person types it: `python`, paths relative to the working folder."""
    return command.replace(sys.executable, "python").replace(f"{Path.cwd()}/", "")


def eval_markdown(result_files: dict[str, Path]) -> str:
    """One row per task and metric, one column per model, from lm-eval's results.json files."""
    scores: dict[tuple[str, str], dict[str, str]] = {}
    for model, path in result_files.items():
        if not path.is_file():
            continue
        for task, metrics in json.loads(path.read_text()).get("results", {}).items():
            for key, value in metrics.items():  # "acc,none": metric "acc", filter "none"
                name = key.split(",")[0]
                if "," in key and isinstance(value, (int, float)) and not name.endswith("_stderr"):
                    stderr = metrics.get(key.replace(name, f"{name}_stderr", 1))
                    cell = f"{value:.4f}" + (f" ± {stderr:.4f}"
                                             if isinstance(stderr, (int, float)) else "")
                    scores.setdefault((task, name), {})[model] = cell
    if not scores:
        return "No evaluation results.\n"
    models = list(result_files)
    rows = [[task, metric, *(cells.get(m, "-") for m in models)]
            for (task, metric), cells in sorted(scores.items())]
    return markdown_table(["task", "metric", *models], rows)


def write_report(demo: Demo, runner: StageRunner) -> Path:
    """REPORT.md: setup, plots, final losses, speedup, eval table, commands, timings."""
    s, out = demo.s, demo.out
    main_runs = [demo.main_run(m) for m in MODELS]
    comparison = compare(main_runs, out, demo.sweep.manifest_path if len(s.budgets) > 1 else None)
    finals = []
    for model, run_dir in zip(MODELS, main_runs, strict=True):
        run = load_run(run_dir)
        tokens, loss = run.final_val
        speed = run.median_tokens_per_sec
        finals.append([model, format_tokens(tokens), f"{loss:.4f}",
                       f"{run.train.losses[-1]:.4f}" if run.train else "-",
                       f"{speed:,.0f}" if speed else "-"])
    budgets = ", ".join(format_tokens(b) for b in s.budgets)
    precisions = ", ".join(s.precisions) if s.precisions else "fp32"
    lrs = ("; peak learning rates " + ", ".join(
        f"{m} {' and '.join(f'{lr:g}' for lr in rates)}" for m, rates in s.lrs.items())
        + " (the report picks the best per budget)") if s.lrs else ""
    lines = ["# megatron-ngpt demo: tiny nGPT vs tiny GPT-2 on CPU", ""]
    if s.quick:
        lines.append("**Quick mode**: a few steps per model, to check the pipeline; the numbers "
                     "mean nothing.\n")
    lines += [
        "Data: the Python documentation shipped with CPython "
        f"(`python -m megatron_ngpt.cli.make_demo_corpus`), every {HELD_OUT_EVERY}th document "
        f"held out for validation; SentencePiece BPE vocabulary {s.vocab_size}. Models: "
        "`configs/tiny/ngpt.yaml` and `configs/tiny/gpt2.yaml` "
        f"(4 layers, d 128, 4 heads, sequence 128, 16 sequences per step), {precisions} on CPU, "
        f"{s.nproc} process(es){lrs}. Token budgets per model: {budgets}, each a complete run "
        "with its own cosine schedule. Curves, losses and evaluation: the largest budget at the "
        "config's precision and LR.", "",
        "## Loss curves (largest budget)", "", f"![loss vs tokens]({LOSS_PLOT})", "",
        "## Final validation loss (held-out data, largest budget)", "",
        markdown_table(["model", "tokens", "val loss", "last train loss", "tokens/s"], finals),
    ]
    if len(s.budgets) > 1:
        lines += [f"![final loss vs budget]({SWEEP_PLOT})", ""]
    lines += [comparison.markdown or "No speedup estimate (missing runs).\n", "",
              "## Downstream evaluation (lm-eval)", ""]
    if s.eval_tasks and HELD_OUT_TASK in s.eval_tasks and s.tasks_dir is None:
        shape = ChoiceTaskShape()
        lines.append(f"`{HELD_OUT_TASK}`: passages of {shape.context_words} words from the "
                     f"held-out documents; which of {CHOICES} continuations of "
                     f"{shape.continuation_words} words follows (the others continue other "
                     f"passages). Chance is {1 / CHOICES:.2f}; `acc_norm` divides by length.\n")
    if s.eval_tasks:
        if s.eval_limit:
            lines.append(f"Limited to {s.eval_limit} documents per task.\n")
        lines.append(eval_markdown({m: demo.eval_dir(m) / "results.json" for m in MODELS}))
    else:
        lines.append(f"Skipped: no lm-eval task YAMLs under {demo.tasks_dir}.\n")
    lines += ["## Reproduce", "", "```", "python -m megatron_ngpt.cli.demo --out " + str(out)
              + (" --quick" if s.quick else "") + (" --full" if s.precisions else ""), "",
              "# or stage by stage:"]
    for stage in demo.stages(lambda: None):
        lines += [_readable(shlex.join(map(str, cmd))) for cmd in stage.commands]
        if stage.name == "train":
            lines += [_readable(cmd) for cmd in demo.train_commands()]
    lines += [f"python -m megatron_ngpt.cli.plot_runs {shlex.join(map(str, main_runs))} --sweep "
              f"{demo.sweep.root} --out {out}", "```", "", "## Stage timings", "",
              markdown_table(["stage", "seconds"],
                             [[k, f"{v:.0f}"] for k, v in runner.seconds.items()])]
    demo.report.write_text("\n".join(lines))
    return demo.report
