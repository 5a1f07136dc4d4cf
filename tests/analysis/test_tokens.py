import re

import pytest

from megatron_ngpt.analysis.tokens import format_tokens, parse_token_list, parse_tokens, token_label


def test_parse_suffixes():
    assert parse_tokens("500K") == 500_000
    assert parse_tokens("1m") == 1_000_000
    assert parse_tokens("2.5B") == 2_500_000_000
    assert parse_tokens("4096") == 4096
    assert parse_token_list("4M, 1M,2M,1M") == [1_000_000, 2_000_000, 4_000_000]


@pytest.mark.parametrize("text", ["", "M", "abc", "-1M", "0", "1.5", "1e"])
def test_parse_rejects_bad_counts(text):
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_tokens(text)


def test_labels_are_exact_and_formatting_readable():
    assert token_label(1_000_000) == "1M"
    assert token_label(1_500_000) == "1500K"
    assert token_label(262_144) == "262144"
    assert format_tokens(1_500_000) == "1.5M"
    assert format_tokens(262_144) == "262.1K"
    assert format_tokens(12) == "12"
