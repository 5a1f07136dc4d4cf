"""Whether Transformer Engine can be used here: probed explicitly, never by try-import.

A Transformer Engine install without CUDA breaks `import megatron.core` (megatron-core guards its
TE import with `except ImportError` only), so nothing here imports TE unless it is installed and
a GPU is present.
"""

from __future__ import annotations

import importlib.util

import torch


def transformer_engine_problem() -> str | None:
    """Why the TE layers cannot be built here, or None when they can."""
    if importlib.util.find_spec("transformer_engine") is None:
        return "Transformer Engine is not installed"
    if not torch.cuda.is_available():
        return "Transformer Engine needs a CUDA GPU and none is available"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as err:  # a broken install raises RuntimeError / OSError, not only ImportError
        return f"importing Transformer Engine failed: {type(err).__name__}: {err}"
    return None


def require_transformer_engine() -> None:
    """Fail clearly before megatron-core builds a TE layer where TE cannot work.

    megatron-core swallows the ImportError of a lazily named module and, without TE, its TE
    classes are mocks; building them would fail later and obscurely, or not at all.
    """
    problem = transformer_engine_problem()
    if problem is not None:
        raise RuntimeError(
            f"model.transformer_impl=transformer_engine: {problem}. On a CUDA machine install it "
            "with `pip install .[gpu]`, or set model.transformer_impl=local."
        )
