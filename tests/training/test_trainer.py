"""The trainer is a component: built from a Config in this process, it trains like the CLI."""

from __future__ import annotations

from megatron_ngpt.arguments import parse_train_args
from megatron_ngpt.training.trainer import Trainer
from tests.tiny import TINY_RUN
from tests.training.trainer_runs import assert_close, losses, train


def test_trainer_in_process_matches_the_command_line(single_rank, tmp_path, tiny_dataset_prefix,
                                                     sp_tokenizer_path):
    flags = ["--train-iters", "3", "--zero-stage", "0"]
    cfg = parse_train_args([
        "--config", "configs/tiny/gpt2.yaml", *TINY_RUN, "--data-path", tiny_dataset_prefix,
        "--tokenizer-model", str(sp_tokenizer_path), "--save", str(tmp_path / "in_process"),
        "--log-interval", "1", "--device", "cpu", *flags])
    assert Trainer.build(cfg, single_rank).train() == 0
    train(1, tmp_path / "cli", "gpt2", tiny_dataset_prefix, sp_tokenizer_path, *flags)
    in_process = losses(tmp_path / "in_process")
    assert sorted(in_process) == [1, 2, 3]
    assert_close(in_process, losses(tmp_path / "cli"), rel=1e-6)
