"""A multiple-choice lm-eval task made from held-out text: which of four continuations follows a
passage (in the style of hellaswag, from text no model has trained on).

Each item is a window of the held-out documents: `context_words` words, then the true
continuation of `continuation_words` words; the three wrong choices are the continuations of
items a quarter, half and three quarters of the task away, so they come from other documents and
read like real text of the same corpus. The task holds a multiple of four items, so these form
groups of four that share one set of choices, each item the answer of one: a model that ignores
the passage picks the same text in all four and scores exactly 1/4, and only reading the
passage beats it. Windows do not overlap, the answer's position cycles through the four places
and everything depends only on the input: the same file gives the same task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_ngpt.data.files import DataError, write_files_atomically
from megatron_ngpt.data.sources import BadRecord, parse_record, read_lines

CHOICES = 4


@dataclass(frozen=True)
class ChoiceTaskShape:
    context_words: int = 24
    continuation_words: int = 6
    max_items: int = 400


def _documents(path: Path, key: str) -> list[list[str]]:
    """The words of every document of a jsonl file; a bad line is a DataError `file:line: why`."""
    documents = []
    for number, line in read_lines(str(path)):
        if not line.strip():
            continue
        try:
            documents.append(parse_record("jsonl", line, (key,))[key].split())
        except BadRecord as err:
            raise DataError(f"{path}:{number}: {err}") from None
    return documents


def _windows(documents: list[list[str]], shape: ChoiceTaskShape) -> list[tuple[str, str]]:
    size = shape.context_words + shape.continuation_words
    windows = []
    for words in documents:
        for start in range(0, len(words) - size + 1, size):
            window = words[start:start + size]
            windows.append((" ".join(window[:shape.context_words]),
                            " ".join(window[shape.context_words:])))
    return windows


def choice_items(documents: list[list[str]], shape: ChoiceTaskShape) -> list[dict]:
    """Items ``{"context", "choices", "label"}``: a multiple of four windows, evenly spaced over
    the input when it holds more than `shape.max_items`."""
    windows = _windows(documents, shape)
    count = min(len(windows), shape.max_items)
    count -= count % CHOICES
    windows = [windows[i * len(windows) // count] for i in range(count)] if count else []
    step = count // CHOICES
    items = []
    for index, (context, answer) in enumerate(windows):
        wrong = [windows[(index + k * step) % count][1] for k in range(1, CHOICES)]
        if len({answer, *wrong}) < CHOICES:
            continue  # a choice twice would make the item ambiguous (and its whole group too)
        label = index % CHOICES
        items.append({"context": context, "choices": [*wrong[:label], answer, *wrong[label:]],
                      "label": label})
    return items


def _task_yaml(name: str, data_file: Path) -> str:
    return "\n".join([
        "# Written by megatron_ngpt.eval.choice_task: which continuation follows the passage.",
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        "output_type: multiple_choice",
        "test_split: test",
        'doc_to_text: "{{context}}"',
        'doc_to_choice: "{{choices}}"',
        'doc_to_target: "{{label}}"',
        "metric_list:",
        *(f"  - metric: {metric}\n    aggregation: mean\n    higher_is_better: true"
          for metric in ("acc", "acc_norm")),
        "metadata:",
        "  version: 1.0", ""])


def write_choice_task(source: str | Path, out_dir: str | Path, name: str, key: str = "text",
                      shape: ChoiceTaskShape = ChoiceTaskShape(), min_items: int = 1) -> int:
    """Write `out_dir/name.yaml` (pointing at the absolute path of `out_dir/name.jsonl`) and the
    items, both or neither; returns the number of items. Fewer than `min_items` is a DataError."""
    source, out_dir = Path(source), Path(out_dir).resolve()
    items = choice_items(_documents(source, key), shape)
    if len(items) < max(min_items, 1):
        raise DataError(f"{source}: {len(items)} items of {shape.context_words}+"
                        f"{shape.continuation_words} words, {min_items} needed: give more text "
                        "or shorter windows")
    data_file = out_dir / f"{name}.jsonl"
    write_files_atomically({
        str(data_file): "".join(json.dumps(item) + "\n" for item in items).encode(),
        str(out_dir / f"{name}.yaml"): _task_yaml(name, data_file).encode()})
    return len(items)
