"""metrics.jsonl stays strict JSON with nested records (the downstream scores), and wandb and the
console get them as flat "downstream/TASK/METRIC" keys."""

from __future__ import annotations

import logging
import math

from megatron_ngpt.config import Config
from megatron_ngpt.training.metrics import MetricsLogger, flatten, json_safe
from tests.training.trainer_runs import records

RECORD = {"step": 3, "tokens": 96, "downstream": {
    "tiny_choice": {"acc": 0.5, "acc_norm": 0.25},
    "tiny_cloze": {"perplexity": math.inf, "acc": 0.0}}}


def test_nested_non_finite_scores_become_null_and_are_named():
    assert json_safe(RECORD) == {
        "step": 3, "tokens": 96, "downstream": {
            "tiny_choice": {"acc": 0.5, "acc_norm": 0.25},
            "tiny_cloze": {"perplexity": None, "acc": 0.0}},
        "nonfinite": ["downstream/tiny_cloze/perplexity"]}
    assert json_safe({"step": 1, "loss": math.nan}) == {"step": 1, "loss": None,
                                                         "nonfinite": ["loss"]}
    assert flatten(RECORD)["downstream/tiny_choice/acc_norm"] == 0.25


def test_logger_writes_nested_records(tmp_path, caplog):
    cfg = Config()
    cfg.logging.progress_bar = False
    logger = MetricsLogger(cfg, tmp_path, 10, 0, True)
    with caplog.at_level(logging.INFO):
        logger.write(RECORD)
    logger.close()
    (written,) = records(tmp_path)
    assert written["downstream"]["tiny_cloze"] == {"perplexity": None, "acc": 0.0}
    assert "downstream/tiny_choice/acc=0.5" in caplog.text
