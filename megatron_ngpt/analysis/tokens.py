"""Token counts as people write them: ``500K``, ``1M``, ``2.5B``."""

from __future__ import annotations

_SCALES = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_tokens(text: str) -> int:
    """``"1M"`` -> 1_000_000; a positive whole number of tokens, or ValueError naming the input."""
    raw = text.strip().upper()
    suffix = raw[-1] if raw and raw[-1] in _SCALES else ""
    try:
        value = float(raw[: len(raw) - len(suffix)]) * _SCALES.get(suffix, 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a token count like 500K, 1M or 2.5B") from None
    if not value >= 1 or not value.is_integer():
        raise ValueError(f"{text!r} is not a positive whole number of tokens")
    return int(value)


def parse_token_list(text: str) -> list[int]:
    """``"1M,2M,4M"`` -> sorted, distinct token counts."""
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{text!r} lists no token counts")
    return sorted({parse_tokens(item) for item in items})


def token_label(count: int) -> str:
    """An exact short name for run directories: 1_000_000 -> ``"1M"``, 1_500_000 -> ``"1500K"``."""
    for suffix in ("T", "B", "M", "K"):
        if count % _SCALES[suffix] == 0:
            return f"{count // _SCALES[suffix]}{suffix}"
    return str(count)


def format_tokens(count: float) -> str:
    """A readable count for tables and plots: 1_500_000 -> ``"1.5M"``, 262_144 -> ``"262.1K"``."""
    for suffix in ("T", "B", "M", "K"):
        if abs(count) >= _SCALES[suffix]:
            return f"{count / _SCALES[suffix]:.4g}{suffix}"
    return f"{count:.4g}"
