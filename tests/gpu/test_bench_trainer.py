"""bench/bench_trainer.py: what it reads from the trainer's metrics, how it stops and skips runs,
and a CPU run of the real trainer through it (the tiny configs, 1 rank)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from megatron_ngpt.config import config_from_dict
from megatron_ngpt.training.metrics import flops_per_token
from tests.distributed import clean_env

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "bench_trainer.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_trainer", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_trainer", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _record(step: int, step_time: float, tokens_per_step: int = 1000) -> dict:
    """A trainer metrics record at 2 GFLOP per token and a 100 TFLOP/s peak."""
    tokens_per_sec = tokens_per_step / step_time
    tflops = tokens_per_sec * 2e9 / 1e12
    return {"step": step, "tokens": step * tokens_per_step, "loss": 1.0, "lr": 0.1,
            "grad_norm": 1.0, "tokens_per_sec": tokens_per_sec, "tflops": tflops,
            "mfu": tflops / 100, "step_time": step_time, "memory_gb": float(step)}


def test_summary_is_the_mean_after_the_warmup(bench):
    result = bench.RunResult(bench.RunSpec("ngpt", 1024, True))
    result.records = [_record(1, 9.0), _record(2, 5.0), _record(3, 0.5), _record(4, 1.5)]
    bench.summarize(result, warmup=2)
    assert result.timed_steps == 2 and result.status == "ok"
    assert result.step_s == pytest.approx(1.0) and result.step_range_s == (0.5, 1.5)
    assert result.tokens_per_s == pytest.approx(1000.0)
    assert result.tflops == pytest.approx(1000 * 2e9 / 1e12)
    assert result.mfu == pytest.approx(1000 * 2e9 / 1e12 / 100)
    assert result.memory_gb == 4.0
    empty = bench.summarize(bench.RunResult(bench.RunSpec("ngpt", 1024, True)), warmup=2)
    assert empty.status == "no steps after the warm-up"


def _stub_trainer(bench, monkeypatch, body: str) -> None:
    """Make `train` launch a small script instead of torchrun + the trainer."""
    def command(spec, inputs, run_dir, steps):
        script = textwrap.dedent(f"""
            import json, sys, time
            from pathlib import Path
            metrics, steps = Path({str(run_dir / 'metrics.jsonl')!r}), {steps}
        """) + textwrap.dedent(body)
        return [sys.executable, "-c", script]

    monkeypatch.setattr(bench, "trainer_command", command)


def _inputs(bench, tmp_path, *argv: str):
    args = bench.parse_args(["--device", "cpu", *argv])
    return bench.Inputs(args, tmp_path, "unused", tmp_path / "unused", None, "CPU")


def test_trainer_is_stopped_once_its_last_step_is_logged(bench, monkeypatch, tmp_path):
    _stub_trainer(bench, monkeypatch, """
        (metrics.parent / "checkpoints").mkdir()  # as if saving had begun
        with metrics.open("w") as out:
            for step in range(1, steps + 1):
                out.write(json.dumps({"step": step, "tokens": step, "tokens_per_sec": 1.0,
                                      "tflops": 1.0, "mfu": 1.0, "step_time": 1.0,
                                      "memory_gb": 1.0}) + "\\n")
                out.flush()
        time.sleep(600)  # a final checkpoint that never ends
    """)
    start = time.perf_counter()
    result = bench.train(bench.RunSpec("gpt2", 64, False), _inputs(bench, tmp_path), 3, 120,
                         tmp_path / "run")
    assert time.perf_counter() - start < 60
    assert result.status == "ok" and [r["step"] for r in result.records] == [1, 2, 3]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_failed_and_hung_runs_are_reported(bench, monkeypatch, tmp_path):
    _stub_trainer(bench, monkeypatch, """
        print("config error: model.hidden_size: must be at least 1")
        sys.exit(2)
    """)
    spec = bench.RunSpec("gpt2", 64, False)
    failed = bench.train(spec, _inputs(bench, tmp_path), 3, 120, tmp_path / "failed")
    assert failed.status == "failed (exit code 2)"
    assert "model.hidden_size: must be at least 1" in failed.log_tail
    _stub_trainer(bench, monkeypatch, "time.sleep(600)")
    hung = bench.train(spec, _inputs(bench, tmp_path), 3, 2, tmp_path / "hung")
    assert hung.status == "timeout after 2 s"
    report = bench.format_report(_inputs(bench, tmp_path).args, _inputs(bench, tmp_path),
                                 [bench.summarize(failed, 1), bench.summarize(hung, 1)])
    assert "| gpt2 | 64 | off | 2 | | | | | | | failed (exit code 2) |" in report
    assert "must be at least 1" in report


def test_runs_past_the_budget_are_skipped(bench, monkeypatch, tmp_path):
    def must_not_run(*args):
        raise AssertionError("a run started without budget")

    monkeypatch.setattr(bench, "train", must_not_run)
    inputs = _inputs(bench, tmp_path, "--budget-s", "10", "--min-run-s", "20")
    specs = bench.all_specs(inputs.args)
    results = bench.run_all(inputs, specs)
    assert [r.spec for r in results] == specs and len(specs) == 8  # 2 models, 2 contexts, 2 modes
    assert all(r.status == "skipped: 10 s of the budget left" for r in results)


def test_cpu_run_times_the_trainer(tmp_path):
    raw = tmp_path / "raw.jsonl"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--seq", "32", "--compile-layers", "off",
         "--workdir", str(tmp_path), "--raw", str(raw), "--output", str(tmp_path / "report.md")],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|") for line in proc.stdout.splitlines()
            if line.startswith(("| ngpt", "| gpt2"))}
    assert sorted(rows) == ["gpt2", "ngpt"]
    assert "seq 32, compiled layers off: nGPT / GPT-2 time per token" in proc.stdout
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    for arch, row in rows.items():
        run = f"{arch}_s32_eager"
        steps = [r for r in records if r["run"] == run]
        assert [r["step"] for r in steps] == [1, 2, 3]  # 1 warm-up + 2 timed steps
        assert row[11].strip() == "ok" and row[5].strip() == "2"
        # The table's TFLOP/s is the trainer's FLOPs per token (from the run's own config) at
        # the timed steps' tokens/s.
        cfg = config_from_dict(yaml.safe_load((tmp_path / "runs" / run / "config.yaml")
                                              .read_text()))
        mean_step_s = (steps[1]["step_time"] + steps[2]["step_time"]) / 2
        tokens_per_s = steps[-1]["tokens"] / 3 / mean_step_s
        assert float(row[7].replace(",", "")) == pytest.approx(tokens_per_s, abs=0.5)  # {:,.0f}
        tflops = tokens_per_s * flops_per_token(cfg, cfg.model.vocab_size) / 1e12
        assert float(row[8]) == pytest.approx(tflops, rel=1e-3)
