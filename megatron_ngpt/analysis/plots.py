"""Loss plots (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter  # noqa: E402

from megatron_ngpt.analysis.runs import Run  # noqa: E402
from megatron_ngpt.analysis.speedup import Reach, SpeedupRow  # noqa: E402
from megatron_ngpt.analysis.tokens import format_tokens  # noqa: E402

_TOKENS_AXIS = FuncFormatter(lambda value, _: format_tokens(value))


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(runs: Sequence[Run], path: Path) -> Path:
    """Training loss and validation loss against tokens, one line per run."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        if run.train:
            ax_train.plot(run.train.tokens, run.train.losses, color=color, lw=1, label=run.label)
        if run.val:
            ax_val.plot(run.val.tokens, run.val.losses, "o-", color=color, ms=3,
                        label=run.label)
    for ax, title in ((ax_train, "training loss"), (ax_val, "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss")
        ax.xaxis.set_major_formatter(_TOKENS_AXIS)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_final_losses(finals: dict[str, list[tuple[int, float]]], path: Path,
                      rows: Sequence[SpeedupRow] = ()) -> Path:
    """Final validation loss against the token budget (log scale), one curve per model;
    interpolated speedups are drawn as horizontal arrows from the baseline point."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (model, points) in enumerate(finals.items()):
        if points:
            tokens, losses = zip(*points, strict=True)
            ax.plot(tokens, losses, "o-", color=f"C{i % 10}", label=model)
    for row in rows:
        if row.candidate.reach is Reach.INTERPOLATED:
            ax.annotate("", xy=(row.candidate.tokens, row.baseline_loss),
                        xytext=(row.baseline_tokens, row.baseline_loss),
                        arrowprops={"arrowstyle": "->", "color": "gray", "lw": 0.8})
            middle = (row.candidate.tokens * row.baseline_tokens) ** 0.5  # on a log axis
            ax.text(middle, row.baseline_loss, f"{row.ratio:.2f}x", fontsize=8, va="bottom",
                    ha="center", color="gray")
    ax.set_xscale("log")
    budgets = sorted({tokens for points in finals.values() for tokens, _ in points})
    ax.set_xticks(budgets, [format_tokens(t) for t in budgets])
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    ax.set_xlabel("training tokens (each run a complete schedule)")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3, which="both")
    if ax.has_data():
        ax.legend()
    return _save(fig, path)
