"""`tools/demo.py --quick` end to end: every artifact of the report is there and has numbers."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ngpt.experiments.manifest import load_manifest
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
@pytest.mark.timeout(1800)
def test_quick_demo_writes_every_artifact(tmp_path):
    out = tmp_path / "demo"
    log = run_demo(out)
    for stage in ("corpus", "tokenizer", "preprocess", "tasks", "train", "export", "eval",
                  "report"):
        assert re.search(rf"\] {stage}: done in \d+s", log), f"stage {stage} did not run"

    for plot in ("loss_curves.png", "final_loss_vs_tokens.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC
    for model in ("ngpt", "gpt2"):
        assert (out / "hf" / model / "config.json").is_file()
        assert list((out / "hf" / model).glob("*.safetensors"))
        assert (out / "eval" / model / "results.json").is_file()

    task_items = (out / "data" / "tasks" / "heldout_continuation.jsonl").read_text().splitlines()
    assert len(task_items) >= 200  # from the held-out documents (the quick demo evaluates 8)
    held_out = [" ".join(json.loads(line)["text"].split())
                for line in (out / "data" / "heldout.jsonl").read_text().splitlines()]
    for line in task_items[::50]:  # passage and answer, word for word, in a held-out document
        item = json.loads(line)
        passage = f"{item['context']} {item['choices'][item['label']]}"
        assert any(passage in document for document in held_out), passage
    report = (out / "REPORT.md").read_text()
    for model in ("ngpt", "gpt2"):  # final validation losses: the runs' own last val_loss
        sweep = load_manifest(out / "sweep")
        run = sweep.run_path(max((r for r in sweep.runs if r.model == model),
                                 key=lambda r: r.budget))
        final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                 if "val_loss" in line][-1]["val_loss"]
        assert re.search(rf"^\| {model} \| 8.192K \| {final:.4f} \|", report, re.MULTILINE)
    assert "## Speedup of ngpt over gpt2 (token-budget sweep)" in report
    assert re.search(r"^\| 8.192K \| \d+\.\d{4} \| .+x", report, re.MULTILINE)
    evals = report.split("## Downstream evaluation")[1].split("## Reproduce")[0]
    assert "| task | metric | ngpt | gpt2 |" in evals
    body = evals.split("|---|---|---|---|\n")[1]
    rows = re.findall(r"^\| ([\w.-]+) \| ([\w.-]+) \| (.+) \| (.+) \|$", body, re.MULTILINE)
    assert {(task, metric) for task, metric, *_ in rows} == {
        ("heldout_continuation", "acc"), ("heldout_continuation", "acc_norm")}
    results = {m: json.loads((out / "eval" / m / "results.json").read_text())["results"]
               for m in ("ngpt", "gpt2")}
    for task, metric, *cells in rows:  # each cell is lm-eval's own number for that model
        for model, cell in zip(("ngpt", "gpt2"), cells, strict=True):
            assert cell.startswith(f"{results[model][task][f'{metric},none']:.4f}"), (task, cell)
    assert "python -m megatron_ngpt.cli.checkpoint_to_hf" in report
    assert "(loss_curves.png)" in report

    # resumable: a second run finds every stage done and only rewrites the report
    log = run_demo(out)
    assert log.count("done before, skipped") == 7
