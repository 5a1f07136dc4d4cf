"""Loss plots (PNG, matplotlib's Agg backend: no display needed).

Every model has one colour in every figure (`model_color`); the figure builders return the
figure, so its lines and labels can be inspected before `save_figure` writes it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from megatron_ngpt.analysis.runs import Run  # noqa: E402
from megatron_ngpt.analysis.speedup import Reach, SpeedupRow  # noqa: E402
from megatron_ngpt.analysis.tokens import format_tokens  # noqa: E402

_TOKENS_AXIS = FuncFormatter(lambda value, _: format_tokens(value))
_KNOWN = {"ngpt": "tab:blue", "gpt2": "tab:orange"}
_OTHERS = ["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray"]
_LINESTYLES = ["-", "--", ":", "-."]
SPEEDUP_LABEL = "speedup"  # gid of the speedup labels of the final-loss figure
# Where a speedup label may go, in points from the middle of its arrow: first choice first.
_LABEL_OFFSETS = [(0, dy * sign) for dy in (9, 18, 27, 36) for sign in (1, -1)]


def model_color(model: str) -> str:
    """The colour of `model` in every figure: fixed for nGPT and GPT-2, from its name else."""
    return to_hex(_KNOWN.get(model) or _OTHERS[zlib.crc32(model.encode()) % len(_OTHERS)])


def save_figure(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curves_figure(runs: Sequence[tuple[str, Run]]) -> plt.Figure:
    """Training and validation loss against tokens for (model, run) pairs: one colour per
    model, one line style per run of a model."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    seen: dict[str, int] = {}
    for model, run in runs:
        color = model_color(model)
        style = _LINESTYLES[seen.get(model, 0) % len(_LINESTYLES)]
        seen[model] = seen.get(model, 0) + 1
        if run.train:
            ax_train.plot(run.train.tokens, run.train.losses, style, color=color, lw=1,
                          label=run.label)
        if run.val:
            ax_val.plot(run.val.tokens, run.val.losses, style, marker="o", color=color, ms=3,
                        label=run.label)
    for ax, title in ((ax_train, "training loss"), (ax_val, "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss")
        ax.xaxis.set_major_formatter(_TOKENS_AXIS)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _marker_boxes(ax: plt.Axes) -> list[Bbox]:
    """Display-space boxes of every marker drawn in `ax`."""
    boxes = []
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "", " "):
            continue
        half = line.get_markersize() * ax.figure.dpi / 72 / 2 + 1
        for x, y in ax.transData.transform(line.get_xydata()):
            boxes.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
    return boxes


def _place_label(ax: plt.Axes, text: str, xy: tuple[float, float], avoid: list[Bbox]
                 ) -> Annotation:
    """The label at the first offset from `xy` where it covers nothing in `avoid` (the last
    offset if every one does); its box joins `avoid`."""
    renderer = ax.figure.canvas.get_renderer()
    label = ax.annotate(text, xy=xy, xytext=_LABEL_OFFSETS[0], textcoords="offset points",
                        fontsize=8, ha="center", va="center", color="dimgray",
                        gid=SPEEDUP_LABEL)
    for offset in _LABEL_OFFSETS:
        label.xyann = offset
        box = label.get_window_extent(renderer)
        if not any(box.overlaps(other) for other in avoid):
            break
    avoid.append(box)
    return label


def final_losses_figure(best: dict[str, list[tuple[int, float]]],
                        rows: Sequence[SpeedupRow] = (),
                        others: dict[str, list[tuple[int, float]]] | None = None,
                        title: str = "") -> plt.Figure:
    """Final validation loss against tokens (log scale), one curve per model through its best
    runs; `others` (runs at other learning rates) as hollow markers of the same colour.
    Interpolated speedups are arrows from the baseline's point, labelled off the markers."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, points in best.items():
        if points:
            tokens, losses = zip(*sorted(points), strict=True)
            ax.plot(tokens, losses, "o-", color=model_color(model), label=model)
    for model, points in (others or {}).items():
        if points:
            tokens, losses = zip(*sorted(points), strict=True)
            ax.plot(tokens, losses, "o", mfc="none", color=model_color(model), alpha=0.6,
                    label=f"{model}, other learning rates")
    ax.set_xscale("log")
    budgets = sorted({t for points in best.values() for t, _ in points})
    ax.set_xticks(budgets, [format_tokens(t) for t in budgets])
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    ax.set_xlabel("training tokens (each point the end of a schedule)")
    ax.set_ylabel("final validation loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if ax.has_data():
        ax.legend(fontsize=8)
    fig.tight_layout()  # before the labels: they are placed in display space
    avoid = _marker_boxes(ax)
    if ax.get_legend() is not None:
        avoid.append(ax.get_legend().get_window_extent(fig.canvas.get_renderer()))
    for row in rows:
        if row.candidate.reach is Reach.INTERPOLATED:
            ax.annotate("", xy=(row.candidate.tokens, row.baseline_loss),
                        xytext=(row.baseline_tokens, row.baseline_loss),
                        arrowprops={"arrowstyle": "->", "color": "gray", "lw": 0.8})
            middle = (row.candidate.tokens * row.baseline_tokens) ** 0.5  # on a log axis
            _place_label(ax, f"{row.ratio:.2f}x", (middle, row.baseline_loss), avoid)
    return fig
