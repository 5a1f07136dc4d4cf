"""The trainer's command line: one function from argv to a validated :class:`Config`.

    --config CONFIG.yaml [section.key=value | --flag VALUE ...]

Every word after ``--config`` sets a config field, in order, the last one winning: a
``section.key=value`` override, or one of the Megatron-style flags below, which are only short
names for config keys. ``--data-path`` takes the following words up to the next flag or override,
so overrides may come anywhere. The trainer, the sweep planner and the demo all read a run's
configuration through :func:`parse_train_args`.
"""

from __future__ import annotations

import argparse
import re

from megatron_ngpt.config import Config, ConfigError, parse_value, read_config, set_value

# flag -> config key; each takes one value.
FLAGS: dict[str, str] = {
    "--tensor-model-parallel-size": "parallel.tensor_model_parallel_size",
    "--pipeline-model-parallel-size": "parallel.pipeline_model_parallel_size",
    "--zero-stage": "parallel.zero_stage",
    "--micro-batch-size": "training.micro_batch_size",
    "--global-batch-size": "training.global_batch_size",
    "--seq-length": "data.seq_length",
    "--train-iters": "training.train_iters",
    "--train-tokens": "training.train_tokens",
    "--exit-interval": "training.exit_interval",
    "--tokenizer-model": "data.tokenizer_model",
    "--precision": "training.precision",
    "--seed": "training.seed",
    "--lr": "optimizer.lr",
    "--log-interval": "logging.log_interval",
    "--save": "training.save",
    "--save-interval": "training.save_interval",
    "--load": "training.load",
    "--eval-interval": "training.eval_interval",
    "--eval-iters": "training.eval_iters",
    "--device": "training.device",
}
# flag -> (config key, value it sets); they take no value.
SWITCHES: dict[str, tuple[str, bool]] = {
    "--activation-checkpointing": ("parallel.activation_checkpointing", True),
    "--no-progress-bar": ("logging.progress_bar", False),
}
DATA_PATH_FLAG = "--data-path"  # takes one or more words: PREFIX or W1 PREFIX1 W2 PREFIX2 ...
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.\w+=")


def is_override(word: str) -> bool:
    """Whether a command-line word is a ``section.key=value`` override."""
    return bool(_OVERRIDE.match(word))


def _usage() -> argparse.ArgumentParser:
    """Only for ``--help`` and usage errors: parsing itself is `parse_train_args`."""
    parser = argparse.ArgumentParser(
        prog="python -m megatron_ngpt.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument(DATA_PATH_FLAG, nargs="+", metavar="WORD",
                        help="dataset prefixes, optionally weighted: 'PREFIX' or "
                             "'W1 PREFIX1 W2 PREFIX2' (sets data.data_path)")
    for flag, (key, value) in SWITCHES.items():
        parser.add_argument(flag, action="store_true", help=f"sets {key}={str(value).lower()}")
    for flag, key in FLAGS.items():
        parser.add_argument(flag, metavar="VALUE", help=f"sets {key}")
    return parser


def _split_flag(word: str) -> tuple[str, str | None]:
    flag, eq, value = word.partition("=")
    return (flag, value) if eq else (word, None)


def ordered_settings(argv: list[str]) -> tuple[str | None, list[tuple[str, str | list[str]]]]:
    """(``--config`` value, [(config key, raw value)] in command-line order).

    Raises ConfigError for an unknown flag or a flag without its value."""
    config: str | None = None
    settings: list[tuple[str, str | list[str]]] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if is_override(word):
            key, raw = word.split("=", 1)
            settings.append((key, raw))
            continue
        flag, inline = _split_flag(word)
        if flag in SWITCHES and inline is None:
            key, value = SWITCHES[flag]
            settings.append((key, str(value).lower()))
            continue
        if flag == DATA_PATH_FLAG:
            values = [] if inline is None else [inline]
            while i < len(words) and not words[i].startswith("--") and not is_override(words[i]):
                values.append(words[i])
                i += 1
            if not values:
                raise ConfigError(f"{DATA_PATH_FLAG}: expected one or more dataset prefixes")
            settings.append(("data.data_path", values))
            continue
        if flag == "--config" or flag in FLAGS:
            if inline is None:
                if i >= len(words):
                    raise ConfigError(f"{flag}: expected a value")
                inline = words[i]
                i += 1
            if flag == "--config":
                config = inline
            else:
                settings.append((FLAGS[flag], inline))
            continue
        raise ConfigError(f"{word}: unknown argument (flags: --config, {DATA_PATH_FLAG}, "
                          f"{', '.join([*SWITCHES, *FLAGS])}; overrides look like "
                          "section.key=value)")
    return config, settings


def parse_train_args(argv: list[str], world_size: int | None = None) -> Config:
    """The validated config of a run from the trainer's arguments (``--help`` prints usage and
    exits); with `world_size`, the batch arithmetic is checked too."""
    if any(word in ("-h", "--help") for word in argv):
        _usage().parse_args(["--help"])
    config, settings = ordered_settings(argv)
    if config is None:
        raise ConfigError("--config: a config file is required (e.g. --config "
                          "configs/tiny/ngpt.yaml)")
    cfg = read_config(config)
    for key, raw in settings:
        value = raw if isinstance(raw, list) else parse_value(cfg, key, raw)
        set_value(cfg, key, value)
    return cfg.validate(world_size)
