"""Reading run directories back, and clear errors for broken ones."""

import json

import pytest

from megatron_ngpt.analysis.runs import RunError, is_complete, load_run
from tests.analysis.fake_runs import power_law, write_run


def test_load_run_splits_training_and_validation(tmp_path):
    run = load_run(write_run(tmp_path / "ngpt_20K", "ngpt", train_iters=20))
    assert run.arch == "ngpt" and run.name == "ngpt_20K" and run.label == "ngpt_20K"
    assert len(run.train) == 20 and run.train.tokens[-1] == 20_000
    assert run.val.steps == [5, 10, 15, 20]
    assert run.final_val == (20_000, pytest.approx(power_law(20_000)))


def test_completion_needs_a_validation_at_the_last_step(tmp_path):
    run_dir = write_run(tmp_path / "r", "gpt2", train_iters=12)
    assert is_complete(run_dir, 12)
    assert not is_complete(run_dir, 13)
    assert not is_complete(tmp_path / "missing", 1)


@pytest.mark.parametrize("line, message", [
    ("{not json", r"metrics.jsonl:2: not valid JSON"),
    ("[1, 2]", r"metrics.jsonl:2: expected a JSON object"),
    ('{"step": 2, "tokens": 2, "loss": "x"}', r"metrics.jsonl:2: 'loss' must be a number"),
    ('{"step": 2.5, "tokens": 2, "loss": 1.0}', r"metrics.jsonl:2: 'step' must be a whole"),
    ('{"step": 2, "tokens": 2, "val_loss": NaN}', r"metrics.jsonl:2: val_loss is nan"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"step": 1, "tokens": 1, "loss": 3.0})
    (tmp_path / "metrics.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(RunError, match=message):
        load_run(tmp_path)


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="no metrics.jsonl"):
        load_run(tmp_path)


def test_throughput_leaves_out_the_first_entry(tmp_path):
    entries = [{"step": i, "tokens": i, "loss": 1.0, "tokens_per_sec": speed}
               for i, speed in enumerate([10.0, 100.0, 120.0, 110.0], 1)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert load_run(tmp_path).median_tokens_per_sec == 110.0
