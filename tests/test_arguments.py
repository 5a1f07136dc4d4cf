"""The trainer's command line: one ordered path from argv to a validated Config."""

from __future__ import annotations

import pytest

from megatron_ngpt.arguments import FLAGS, parse_train_args
from megatron_ngpt.config import ConfigError, load_config

TINY = "configs/tiny/ngpt.yaml"


def test_flags_and_overrides_apply_in_order_the_last_one_winning():
    cfg = parse_train_args(["--config", TINY, "--lr", "1e-3", "optimizer.lr=2e-3",
                            "training.seed=5", "--seed", "7"])
    assert cfg.optimizer.lr == 2e-3 and cfg.training.seed == 7
    cfg = parse_train_args(["--config", TINY, "optimizer.lr=2e-3", "--lr=3e-3"])
    assert cfg.optimizer.lr == 3e-3


def test_overrides_may_follow_data_path():
    cfg = parse_train_args(["--config", TINY, "--data-path", "0.3", "a", "0.7", "b",
                            "model.hidden_size=256", "--zero-stage", "2"])
    assert cfg.data.data_path == ["0.3", "a", "0.7", "b"]
    assert cfg.model.hidden_size == 256 and cfg.parallel.zero_stage == 2


# A valid value per flag, different from the tiny config's own.
FLAG_VALUES = {
    "--tensor-model-parallel-size": ("2", 2), "--pipeline-model-parallel-size": ("2", 2),
    "--zero-stage": ("0", 0), "--micro-batch-size": ("8", 8), "--global-batch-size": ("32", 32),
    "--seq-length": ("64", 64), "--train-iters": ("9", 9), "--train-tokens": ("99", 99),
    "--exit-interval": ("3", 3), "--tokenizer-model": ("tok.model", "tok.model"),
    "--precision": ("bf16", "bf16"), "--seed": ("7", 7), "--lr": ("0.5", 0.5),
    "--log-interval": ("2", 2), "--save": ("runs/x", "runs/x"), "--save-interval": ("4", 4),
    "--load": ("runs/y", "runs/y"), "--eval-interval": ("6", 6), "--eval-iters": ("1", 1),
    "--device": ("auto", "auto"),
}


def test_every_flag_sets_its_config_key():
    assert FLAG_VALUES.keys() == FLAGS.keys()
    for flag, key in FLAGS.items():
        raw, expected = FLAG_VALUES[flag]
        cfg = parse_train_args(["--config", TINY, flag, raw])
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == expected, flag
    cfg = parse_train_args(["--config", TINY, "--activation-checkpointing", "--no-progress-bar"])
    assert cfg.parallel.activation_checkpointing and not cfg.logging.progress_bar


def test_text_values_stay_text():
    cfg = parse_train_args(["--config", TINY, "--save", "yes", "data.tokenizer_model=123"])
    assert cfg.training.save == "yes" and cfg.data.tokenizer_model == "123"


def test_the_same_config_as_load_config():
    argv = ["model.hidden_size=256", "optimizer.lr=1e-3", "data.split=1,1"]
    assert parse_train_args(["--config", TINY, *argv]) == load_config(TINY, argv)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "1"], "--config: a config file is required"),
    (["--config", TINY, "--no-such-flag", "1"], "--no-such-flag: unknown argument"),
    (["--config", TINY, "--lr"], "--lr: expected a value"),
    (["--config", TINY, "--data-path"], "--data-path: expected one or more"),
    (["--config", TINY, "--zero-stage", "two"], "parallel.zero_stage: expected an integer"),
    (["--config", TINY, "model.nope=1"], "unknown key 'nope'"),
    (["--config", "configs/missing.yaml"], "config file not found"),
])
def test_bad_command_lines_name_the_argument(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_train_args(argv)


def test_packaged_configs_load_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the package's own copy is used
    assert parse_train_args(["--config", "configs/tiny/gpt2.yaml"]).model.arch == "gpt2"
    assert load_config("ngpt_0.5b_1k").model.num_layers == 24


def test_derived_quantities_are_config_methods():
    cfg = load_config(TINY, ["training.train_iters=0", "training.train_tokens=10000"])
    assert cfg.tokens_per_step == 16 * 128
    assert cfg.total_steps() == 5  # 10000 / 2048, rounded up to whole steps
    with pytest.raises(ConfigError, match="training.train_iters: set train_iters or"):
        load_config(TINY, ["training.train_iters=0"]).total_steps()
