"""A few MB of real English text with no download: the Python documentation CPython ships.

Documents are the language-reference topics of ``pydoc_data.topics`` (what ``help()`` shows), the
docstrings of the built-in C modules, and per standard-library module its docstrings (module,
classes, functions) read from the source with ``ast`` so that no Python module is imported. The
result depends only on the Python version: files are visited in sorted order and every 20th
document is held out when asked.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

HELD_OUT_EVERY = 20  # about 5% of the text: validation and the demo's choice task
# Test suites, GUI demos and vendored third-party code are not the prose we want.
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "turtledemo", "__pycache__",
               "lib2to3", "ensurepip", "_pydecimal.py", "pydoc_data"}


def _module_docstrings(path: Path) -> str:
    """Module, class and function docstrings of one file, each headed by the name it documents."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in [tree, *ast.walk(tree)]:
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if doc and len(doc) > 40:
            parts.append(doc if isinstance(node, ast.Module) else f"{node.name}\n\n{doc}")
    return "\n\n".join(dict.fromkeys(parts))  # ast.walk visits the module again: drop repeats


def _builtin_docstrings(name: str) -> str:
    """Docstrings of a C module (builtins, sys, itertools...): they have no source to parse, and
    importing a built-in module runs no Python code."""
    module = importlib.import_module(name)
    parts = [module.__doc__ or ""]
    for attr in sorted(vars(module)):
        obj = getattr(module, attr)
        if attr.startswith("_") or not callable(obj):
            continue
        members = [obj] + [vars(obj)[m] for m in sorted(vars(obj)) if not m.startswith("_")] \
            if isinstance(obj, type) else [obj]
        for member in members:
            doc = getattr(member, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40:
                parts.append(f"{getattr(member, '__qualname__', attr)}\n\n{inspect.cleandoc(doc)}")
    return "\n\n".join(dict.fromkeys(p for p in parts if p))


def iter_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name].strip()
    for name in sorted(sys.builtin_module_names):
        text = _builtin_docstrings(name)
        if text:
            yield text
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIP_PARTS.isdisjoint(path.relative_to(stdlib).parts):
            text = _module_docstrings(path)
            if text:
                yield text


def write_demo_corpus(output: str | Path, held_out: str | Path | None = None) -> tuple[int, int]:
    """Write jsonl lines ``{"text": ...}``; returns (training documents, held-out documents)."""
    counts = [0, 0]
    paths = [Path(output)] + ([Path(held_out)] if held_out else [])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    streams = [path.open("w", encoding="utf-8") for path in paths]
    try:
        for index, text in enumerate(iter_documents()):
            which = 1 if held_out and index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else 0
            streams[which].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            counts[which] += 1
    finally:
        for stream in streams:
            stream.close()
    return counts[0], counts[1]
