"""`tools/demo.py --quick` end to end: every artifact of the report is there and has numbers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed import DIST_VARIABLES, REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_demo(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={**{k: v for k, v in os.environ.items() if k not in DIST_VARIABLES},
             "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_quick_demo_writes_every_artifact(tmp_path):
    out = tmp_path / "demo"
    log = run_demo(out)
    for stage in ("corpus", "tokenizer", "preprocess", "train", "export", "eval", "report"):
        assert re.search(rf"\] {stage}: done in \d+s", log), f"stage {stage} did not run"

    for plot in ("loss_curves.png", "final_loss_vs_tokens.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC
    for model in ("ngpt", "gpt2"):
        assert (out / "hf" / model / "config.json").is_file()
        assert list((out / "hf" / model).glob("*.safetensors"))
        assert (out / "eval" / model / "results.json").is_file()

    report = (out / "REPORT.md").read_text()
    for model in ("ngpt", "gpt2"):  # final validation losses
        assert re.search(rf"^\| {model} \| 8.192K \| \d+\.\d{{4}} \|", report, re.MULTILINE)
    assert "## Speedup of ngpt over gpt2 (token-budget sweep)" in report
    assert re.search(r"^\| 8.192K \| \d+\.\d{4} \| .+x", report, re.MULTILINE)
    evals = report.split("## Downstream evaluation")[1].split("## Reproduce")[0]
    assert "| task | metric | ngpt | gpt2 |" in evals
    body = evals.split("|---|---|---|---|\n")[1]
    scores = re.findall(r"^\| [\w.-]+ \| [\w.-]+ \| (.+) \| (.+) \|$", body, re.MULTILINE)
    assert scores and all(re.match(r"\d+\.\d{4}", cell) for row in scores for cell in row)
    assert "python -m megatron_ngpt.cli.checkpoint_to_hf" in report
    assert "(loss_curves.png)" in report

    # resumable: a second run finds every stage done and only rewrites the report
    log = run_demo(out)
    assert log.count("done before, skipped") == 6
