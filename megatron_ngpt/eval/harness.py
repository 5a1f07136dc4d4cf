"""Downstream evaluation of an exported Hugging Face folder with lm-evaluation-harness.

The exported folder is an ordinary Hugging Face model (nGPT through ``trust_remote_code``), so
lm-eval's own ``hf`` backend runs it; this module only picks the tasks, calls
`lm_eval.simple_evaluate` and writes ``results.json`` (lm-eval's results) and ``results.md``
(its table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The downstream tasks of the nGPT paper and the Nous reproduction.
TASK_GROUPS = {"seed": ("hellaswag", "arc_easy", "winogrande", "wsc273", "lambada_openai")}
OFFLINE_HINT = ("Without network, use a local copy: run the tasks once where there is network "
                "and copy its Hugging Face datasets cache (~/.cache/huggingface/datasets, or "
                "HF_HOME) here, then set HF_DATASETS_OFFLINE=1; or give --include-path task "
                "YAMLs whose dataset_path/data_files name local files (docs/export_eval.md)")


class DatasetUnavailable(RuntimeError):
    """A task's dataset could not be downloaded (no network, or offline mode)."""


def expand_tasks(spec: str | list[str]) -> list[str]:
    """``"seed,my_task"`` -> task names, with group aliases (``seed``) expanded, order kept."""
    names = spec.split(",") if isinstance(spec, str) else spec
    tasks: list[str] = []
    for name in (n.strip() for n in names if n.strip()):
        for task in TASK_GROUPS.get(name, (name,)):
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise ValueError("no tasks given")
    return tasks


def evaluate_hf(model_dir: str | Path, tasks: list[str], limit: int | float | None = None,
                include_path: str | Path | None = None, batch_size: int | str = 8,
                device: str | None = None) -> dict[str, Any]:
    """lm-eval's results dict for the exported model in `model_dir` (CUDA when available).
    Raises `DatasetUnavailable` naming the dataset when a task's data cannot be downloaded."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; is this an exported model folder?")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval tasks: {', '.join(unknown)} "
                         "(custom task YAMLs need --include-path)")
    try:
        return simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir), "trust_remote_code": True, "dtype": "auto"},
            tasks=tasks, limit=limit, batch_size=batch_size, task_manager=manager,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            log_samples=False,
        )
    except ConnectionError as err:  # `datasets` names the dataset it could not reach
        raise DatasetUnavailable(f"{err}. {OFFLINE_HINT}") from None


def results_markdown(results: dict[str, Any], model_dir: str | Path,
                     limit: int | float | None) -> str:
    from lm_eval.utils import make_table

    lines = [f"# lm-eval results: {model_dir}", ""]
    if limit is not None:
        lines += [f"Limited to {limit} documents per task: not comparable to full runs.", ""]
    lines.append(make_table(results))
    if results.get("groups"):
        lines.append(make_table(results, "groups"))
    return "\n".join(lines)


def write_results(results: dict[str, Any], output_dir: str | Path, model_dir: str | Path,
                  limit: int | float | None = None) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into `output_dir`; returns their paths."""
    from lm_eval.utils import handle_non_serializable

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    md_path.write_text(results_markdown(results, model_dir, limit))
    return json_path, md_path
