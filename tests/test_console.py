"""What a 2-rank run prints (`megatron_ngpt/log.py`): rank 0's log lines, other ranks only their
errors, none of the warnings known to be harmless, every other warning, and no progress bar when
the output is not a terminal."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.distributed import REPO, clean_env, torchrun
from tests.training.trainer_runs import trainer_args
from tests.warning_probe import ERROR, UNKNOWN_WARNING

LOG_LINE = re.compile(r"\[\d\d:\d\d:\d\d rank(\d+)\] (.*)")
BAR = re.compile(r"\d+%\|")  # tqdm's "50%|#####     | 1/2"


def _console(proc: subprocess.CompletedProcess) -> list[str]:
    lines = (proc.stdout + proc.stderr).splitlines()  # text mode: a bar's "\r" splits lines too
    assert not any(BAR.search(line) for line in lines), "a progress bar was drawn into a log"
    return lines


def _check_console(lines: list[str]) -> list[str]:
    """Rank 0's log messages, after checking that nothing else was printed but the probe's
    warning (from rank 0 only) and its error (from each rank)."""
    logged = [(int(m[1]), m[2]) for m in map(LOG_LINE.fullmatch, lines) if m]
    assert sorted(text for rank, text in logged if text.startswith(ERROR)) == \
        [f"{ERROR} 0", f"{ERROR} 1"]
    assert [(rank, text) for rank, text in logged if rank != 0] == [(1, f"{ERROR} 1")]
    others = [line for line in lines if not LOG_LINE.fullmatch(line)]
    assert len(others) == 2 and others[0].endswith(f"UserWarning: {UNKNOWN_WARNING}"), \
        "\n".join(others)  # the warning and its source line, once
    return [text for rank, text in logged if rank == 0 and not text.startswith(ERROR)]


def test_a_resumed_two_rank_run_prints_rank_0_and_errors_only(tmp_path, tiny_dataset_prefix,
                                                              sp_tokenizer_path):
    # The tiny corpus is too small for the default split's test set: every rank has that notice.
    args = trainer_args(tmp_path, "ngpt", tiny_dataset_prefix, sp_tokenizer_path,
                        "logging.progress_bar=true")
    # TP=2 (megatron-core's CUDA advice), then resumed at DP=2 with ZeRO-2 (torch deprecations)
    first = torchrun(2, "-m", "tests.warning_probe", *args, "--train-iters", "2",
                     "--tensor-model-parallel-size", "2")
    resumed = torchrun(2, "-m", "tests.warning_probe", *args, "--train-iters", "3",
                       "--zero-stage", "2")
    for proc, steps in ((first, ["step 1", "step 2", "step 2"]), (resumed, ["step 3", "step 3"])):
        messages = _check_console(_console(proc))
        assert len(set(messages)) == len(messages), messages  # nothing said twice
        assert [m.split(":")[0] for m in messages if re.match(r"step \d+: (val_)?loss", m)] == steps
        assert sum("no test set" in m for m in messages) == 1, messages
    assert any(m.startswith("resumed from") for m in messages), messages


def test_tools_import_megatron_core_quietly():
    proc = subprocess.run([sys.executable, "-m", "megatron_ngpt.cli.preprocess_data", "--help"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "usage" in proc.stdout
    assert proc.stderr == ""


def test_known_warnings_are_dropped_only_by_message_and_module():
    """Each filter names the module the warning comes from: the same words from elsewhere show."""
    code = ("import warnings, megatron_ngpt\n"
            "warnings.warn_explicit('Transformer Engine and Apex are not installed', UserWarning,"
            " 'x.py', 1, module='megatron.core.optimizer')\n"
            "warnings.warn_explicit('Transformer Engine and Apex are not installed', UserWarning,"
            " 'y.py', 1, module='some.other.module')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "y.py:1: UserWarning: Transformer Engine and Apex are not installed"]
