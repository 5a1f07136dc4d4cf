"""Bad records are skipped and reported as file:line: reason, or fail the run under --strict;
no run that does not finish leaves a .bin/.idx behind."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time

import pytest

from megatron_ngpt.data.preprocess import PreprocessError, preprocess

GOOD = b'{"text": "A perfectly good document."}\n'
BAD_LINES = {  # bad line -> the reason reported for it
    b'{"text": "unterminated\n': "malformed JSON",
    b'{"title": "no text key"}\n': "missing key: 'text'",
    b'{"text": "caf\xe9 in latin-1"}\n': "invalid UTF-8",
    b'{"text": "   "}\n': "empty document",
    b'["a", "list"]\n': "not a JSON object",
    b'{"text": 42}\n': "not a string",
}


@pytest.mark.parametrize("bad", BAD_LINES, ids=lambda b: BAD_LINES[b].split(":")[0])
def test_bad_record_is_skipped_counted_and_located(tmp_path, sp_tokenizer_path, bad):
    source = tmp_path / "in.jsonl"
    source.write_bytes(GOOD + b"\n" + bad + GOOD)  # a blank line is not a document
    stats = preprocess(str(tmp_path / "out"), str(sp_tokenizer_path), [str(source)],
                       progress=False)
    assert stats.documents == 2
    assert sum(stats.skipped.values()) == 1
    assert stats.examples[0].startswith(f"{source}:3: {BAD_LINES[bad]}")
    assert f"{source}:3: {BAD_LINES[bad]}" in stats.summary()


def test_strict_fails_at_the_first_bad_record_and_writes_nothing(tmp_path, sp_tokenizer_path,
                                                                 tool, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(GOOD * 600 + b'{"text": "unterminated\n' + GOOD + b"{oops}\n")
    code = tool("preprocess_data").main([
        "--input", str(source), "--tokenizer-model", str(sp_tokenizer_path), "--quiet",
        "--output-prefix", str(tmp_path / "out"), "--strict", "--workers", "2"])
    assert code == 1
    assert f"{source}:601: malformed JSON" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_summary_counts_every_reason(tmp_path, sp_tokenizer_path, tool, capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(GOOD + b"".join(BAD_LINES) * 2)
    code = tool("preprocess_data").main([
        "--input", str(source), "--tokenizer-model", str(sp_tokenizer_path), "--quiet",
        "--output-prefix", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 documents" in out and "skipped 12 records" in out
    for reason in BAD_LINES.values():
        assert f"2 {reason.split(':')[0]}" in out


def test_all_records_bad_is_an_error_without_output(tmp_path, sp_tokenizer_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"text": ""}\n')
    with pytest.raises(PreprocessError, match="every record was skipped"):
        preprocess(str(tmp_path / "out"), str(sp_tokenizer_path), [str(source)], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_missing_input_is_a_clear_error(tmp_path, sp_tokenizer_path, tool, capsys):
    code = tool("preprocess_data").main([
        "--input", str(tmp_path / "*.jsonl"), "--tokenizer-model", str(sp_tokenizer_path),
        "--output-prefix", str(tmp_path / "out")])
    assert code == 1 and "no files match" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "term", "kill-9"])
def test_interrupted_run_leaves_no_dataset(tmp_path, sp_tokenizer_path, tool, sig):
    source = tmp_path / "big.jsonl"
    line = json.dumps({"text": "Some words that take a while to tokenize. " * 50}) + "\n"
    source.write_text(line * 30000)  # ~65 MB of text: many seconds of work
    argv = ["--quiet", "--input", str(source), "--tokenizer-model", str(sp_tokenizer_path),
            "--output-prefix", str(tmp_path / "out"), "--workers", "2"]
    main = tool("preprocess_data").main
    # A forked copy of this process runs the tool as a fresh interpreter would, minus the imports.
    run = multiprocessing.get_context("fork").Process(target=lambda: sys.exit(main(argv)))
    run.start()
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("out") and p.stat().st_size for p in tmp_path.iterdir()):
        assert run.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(run.pid, sig)
    run.join(timeout=60)
    assert run.exitcode not in (0, None)
    outputs = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))
    assert not [name for name in outputs if name.endswith((".bin", ".idx"))]
    if sig != signal.SIGKILL:
        assert outputs == []  # temporaries removed too
