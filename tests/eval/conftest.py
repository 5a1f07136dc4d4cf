"""The export suite's offline settings and fixtures (tiny SentencePiece model, tiny models)."""

from tests.hf.conftest import sp_model  # noqa: F401  (also switches the hub to offline mode)
