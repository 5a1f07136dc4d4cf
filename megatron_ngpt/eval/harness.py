"""Downstream evaluation with lm-evaluation-harness: task selection shared by `tools/eval.py` and
the in-loop evaluation, and the evaluation of an exported Hugging Face folder.

The exported folder is an ordinary Hugging Face model (nGPT through ``trust_remote_code``), so
lm-eval's own ``hf`` backend runs it; this module only picks the tasks, calls
`lm_eval.simple_evaluate` and writes ``results.json`` (lm-eval's results) and ``results.md``
(its table). The in-loop evaluation (`megatron_ngpt.eval.in_loop`) loads tasks through
`load_tasks` too, so that both see the same task configurations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The downstream tasks of the nGPT paper and the Nous reproduction.
TASK_GROUPS = {"seed": ("hellaswag", "arc_easy", "winogrande", "wsc273", "lambada_openai")}
# Offline tasks shipped with the package; always on lm-eval's include path.
PACKAGED_TASKS = Path(__file__).resolve().parent / "tasks"
# Where the packaged tasks' relative data_files start (the checkout, or site-packages).
PACKAGE_PARENT = PACKAGED_TASKS.parents[2]

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


def load_tasks(tasks: list[str], include_path: str | Path | None = None
               ) -> tuple[Any, list[str | dict[str, Any]]]:
    """(lm-eval `TaskManager`, task specs for `simple_evaluate`) for task names.

    The packaged tasks and `include_path` are searched first; lm-eval's own few thousand task
    YAMLs are indexed only when a name is not found there (that index takes tens of seconds).
    Unknown names are a ValueError. See `resolve_data_files` for the specs."""
    from lm_eval.tasks import TaskManager

    paths = list(dict.fromkeys(
        str(Path(p).resolve()) for p in (PACKAGED_TASKS, include_path) if p))
    manager = TaskManager(include_path=paths, include_defaults=False)
    if any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=paths)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval tasks: {', '.join(unknown)} "
                         "(custom task YAMLs need an include path)")
    return manager, [resolve_data_files(t, manager) for t in tasks]


def resolve_data_files(task: str, manager: Any) -> str | dict[str, Any]:
    """The task's name, or, when its YAML names local ``dataset_kwargs.data_files`` that do not
    exist relative to the working directory (lm-eval's rule), its whole config with those paths
    made absolute: found beside the YAML or under `PACKAGE_PARENT` (where the packaged tasks'
    paths start). So tasks run from any working directory."""
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_path = manager.task_index[task].yaml_path
    if yaml_path is None:
        return task
    config = load_yaml(yaml_path, resolve_func=True)
    data_files = (config.get("dataset_kwargs") or {}).get("data_files")
    if data_files is None:
        return task
    bases = (Path(yaml_path).parent, PACKAGE_PARENT)

    def resolve(value):
        if isinstance(value, dict):
            return {key: resolve(v) for key, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, str) and not Path(value).is_absolute() and not Path(value).exists():
            found = [base / value for base in bases if (base / value).is_file()]
            return str(found[0]) if found else value
        return value

    resolved = resolve(data_files)
    if resolved == data_files:
        return task
    return {**config, "dataset_kwargs": {**config["dataset_kwargs"], "data_files": resolved}}


def evaluate_hf(model_dir: str | Path, tasks: list[str], limit: int | float | None = None,
                include_path: str | Path | None = None, batch_size: int | str = 8,
                device: str | None = None) -> dict[str, Any]:
    """lm-eval's results dict for the exported model in `model_dir` (CUDA when available).
    Raises `DatasetUnavailable` naming the dataset when a task's data cannot be downloaded."""
    import torch
    from lm_eval import simple_evaluate

    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; is this an exported model folder?")
    manager, specs = load_tasks(tasks, include_path)
    try:
        return simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir), "trust_remote_code": True, "dtype": "auto"},
            tasks=specs, limit=limit, batch_size=batch_size, task_manager=manager,
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
