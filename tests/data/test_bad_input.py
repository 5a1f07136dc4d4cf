"""Bad records are skipped and reported as file:line: reason, or fail the run under --strict;
a damaged compressed input, an unusable tokenizer, a read-only folder or a full disk fails the
data tools with one line naming the file; no run that does not finish leaves anything behind."""

from __future__ import annotations

import contextlib
import gzip
import json
import multiprocessing
import os
import signal
import subprocess
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


def _cut(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)  # as the zstd CLI does


DAMAGED_INPUTS = {  # name -> (file name, damaged bytes of GOOD * 5000, reason reported)
    "truncated-zst": ("in.jsonl.zst", lambda d: _cut(_zstd(d)), "compressed data ends early"),
    "truncated-gz": ("in.jsonl.gz", lambda d: _cut(gzip.compress(d)),
                     "compressed data ends early"),
    "corrupt-zst": ("in.jsonl.zst", lambda d: _flip(_zstd(d)), "corrupt compressed data"),
    "corrupt-gz": ("in.jsonl.gz", lambda d: _flip(gzip.compress(d)), "corrupt compressed data"),
}


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    return text


@pytest.mark.parametrize("damage", DAMAGED_INPUTS)
def test_damaged_compressed_input_fails_naming_the_file(tmp_path, sp_tokenizer_path, tool,
                                                        capsys, damage):
    name, make, reason = DAMAGED_INPUTS[damage]
    source = tmp_path / name
    source.write_bytes(make(GOOD * 5000))
    code = tool("preprocess_data").main([
        "--input", str(source), "--tokenizer-model", str(sp_tokenizer_path), "--quiet",
        "--output-prefix", str(tmp_path / "out")])
    assert code == 1
    assert one_line(capsys.readouterr().err).startswith(f"error: {source}: {reason}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_tokenizer_training_fails_on_a_truncated_input(tmp_path, tool, capsys):
    source = tmp_path / "in.jsonl.zst"
    source.write_bytes(_cut(_zstd(GOOD * 5000)))
    code = tool("train_tokenizer").main(["--input", str(source), "--vocab-size", "300",
                                         "--output-prefix", str(tmp_path / "tok")])
    assert code == 1
    assert one_line(capsys.readouterr().err).startswith(
        f"error: {source}: compressed data ends early")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl.zst"]


def test_a_last_line_without_newline_is_a_record(tmp_path, sp_tokenizer_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(GOOD + GOOD.rstrip(b"\n"))
    stats = preprocess(str(tmp_path / "out"), str(sp_tokenizer_path), [str(source)],
                       progress=False)
    assert stats.documents == 2 and not stats.skipped


@pytest.mark.parametrize("content", [None, b"not a model", b""], ids=["missing", "corrupt",
                                                                      "empty"])
def test_unusable_tokenizer_is_one_line_naming_it(tmp_path, tool, capsys, content):
    tokenizer = tmp_path / "tok.model"
    if content is not None:
        tokenizer.write_bytes(content)
    source = tmp_path / "in.jsonl"
    source.write_bytes(GOOD)
    code = tool("preprocess_data").main([
        "--input", str(source), "--tokenizer-model", str(tokenizer), "--quiet",
        "--output-prefix", str(tmp_path / "out")])
    assert code == 1
    assert one_line(capsys.readouterr().err).startswith(f"error: {tokenizer}: ")
    assert not list(tmp_path.glob("out*"))


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder nothing can be written to. Permissions do not stop root, so as root it is
    a read-only tmpfs (where mounting is allowed); otherwise a folder without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif _mount("-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)):
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        pytest.skip("root without permission to mount: cannot make a read-only folder")


@pytest.fixture
def full_disk(tmp_path):
    """(folder, context) where writing more than 8 KB fails inside the context (every output
    here is larger): an 8 KB tmpfs where mounting is allowed (ENOSPC, a full disk), else a
    file-size limit on this process (EFBIG: the same failure path, no privileges needed)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if _mount("-t", "tmpfs", "-o", "size=8k", "tmpfs", str(folder)):
        yield folder, contextlib.nullcontext()
        subprocess.run(["umount", str(folder)], check=True)
    else:
        yield folder, _file_size_limit(8 * 1024)


@contextlib.contextmanager
def _file_size_limit(limit: int):
    import resource

    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def _tool_runs(tiny_corpus, sp_tokenizer_path, tiny_dataset_prefix, output: str
               ) -> dict[str, tuple[str, list[str], str]]:
    """Per data tool: (tool, arguments that write to `output`, the output file named first)."""
    return {
        "preprocess": ("preprocess_data", [
            "--input", str(tiny_corpus), "--tokenizer-model", str(sp_tokenizer_path), "--quiet",
            "--output-prefix", output], f"{output}_text_document.bin"),
        "merge": ("merge_datasets", ["--input", tiny_dataset_prefix, tiny_dataset_prefix,
                                     "--output-prefix", output], f"{output}.bin"),
        "tokenizer": ("train_tokenizer", [
            "--input", str(tiny_corpus), "--vocab-size", "1000", "--input-sentence-size",
            "20000", "--output-prefix", output], f"{output}.model"),
    }


@pytest.mark.parametrize("run", ["preprocess", "merge", "tokenizer"])
def test_read_only_output_is_one_line_and_writes_nothing(read_only_dir, tiny_corpus,
                                                        sp_tokenizer_path, tiny_dataset_prefix,
                                                        tool, capsys, run):
    name, argv, first_output = _tool_runs(tiny_corpus, sp_tokenizer_path, tiny_dataset_prefix,
                                          str(read_only_dir / "out"))[run]
    assert tool(name).main(argv) == 1
    assert one_line(capsys.readouterr().err).startswith(f"error: {first_output}: cannot write")
    assert not list(read_only_dir.iterdir())


@pytest.mark.parametrize("run", ["preprocess", "merge", "tokenizer"])
def test_full_disk_is_one_line_and_leaves_nothing(full_disk, tiny_corpus, sp_tokenizer_path,
                                                 tiny_dataset_prefix, tool, capsys, run):
    folder, limit = full_disk
    name, argv, first_output = _tool_runs(tiny_corpus, sp_tokenizer_path, tiny_dataset_prefix,
                                          str(folder / "out"))[run]
    main = tool(name).main
    with limit:
        code = main(argv)
    assert code == 1
    error = one_line(capsys.readouterr().err)
    assert error.startswith(f"error: {folder / 'out'}") and ": cannot write: " in error
    assert not list(folder.iterdir())
