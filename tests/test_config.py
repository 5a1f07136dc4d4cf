"""Config loading: YAML + overrides, typed values, and errors that name the offending field."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_ngpt.config import Config, ConfigError, load_config, padded_vocab_size

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = CONFIGS / "tiny" / "ngpt.yaml"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.arch in path.name


def test_overrides_parse_yaml_scalars_lists_and_bools() -> None:
    cfg = load_config(TINY, [
        "model.hidden_size=256", "optimizer.lr=1e-3", "optimizer.min_lr=0", "logging.wandb=true",
        "data.data_path=[0.3, a_text_document, 0.7, b_text_document]",
        "data.train_data_path=x_text_document y_text_document", "model.init_std=null",
        "training.save=",
    ])
    assert cfg.model.hidden_size == 256 and cfg.logging.wandb is True
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.min_lr == 0.0  # YAML 1.1 reads 1e-3 as text
    assert cfg.data.data_path == ["0.3", "a_text_document", "0.7", "b_text_document"]
    assert cfg.data.train_data_path == ["x_text_document", "y_text_document"]
    assert cfg.model.init_std is None and cfg.model.init_std_value == 256 ** -0.5
    assert cfg.training.save == ""


def test_defaults_load_without_a_file() -> None:
    assert load_config(None).to_dict() == Config().to_dict()


@pytest.mark.parametrize("override,field", [
    ("model.hidden_sise=128", "hidden_sise"),
    ("modle.hidden_size=128", "unknown section 'modle'"),
    ("hidden_size=128", "keys look like 'section.name'"),
    ("model.hidden_size", "section.key=value"),
    ("model.hidden_size=big", "model.hidden_size: expected an integer"),
    ("model.hidden_size=1.5", "model.hidden_size: expected an integer"),
    ("logging.wandb=yes please", "logging.wandb: expected true/false"),
    ("optimizer.lr=fast", "optimizer.lr: expected a number"),
    ("data.data_path={a: 1}", "data.data_path: expected a list"),
    ("model.arch=llama", "model.arch: 'llama' is not one of ngpt, gpt2"),
    ("model.normalization=BatchNorm", "model.normalization"),
    ("training.precision=fp16", "training.precision"),
    ("parallel.tensor_model_parallel_size=3", "parallel.tensor_model_parallel_size: 4 attention"),
    ("model.num_attention_heads=3", "model.num_attention_heads: hidden_size 128"),
    ("model.num_attention_heads=128", "model.num_attention_heads: head dim 1"),
    ("parallel.pipeline_model_parallel_size=3", "parallel.pipeline_model_parallel_size"),
    ("parallel.zero_stage=4", "parallel.zero_stage"),
    ("data.split=90,x,1", "data.split"),
    ("data.split=0,0,0", "data.split"),
    ("data.split=1,1,1,1", "data.split"),
    ("data.data_path=[0.5, a, 0.5]", "data.data_path"),
    ("optimizer.min_lr=1.0", "optimizer.min_lr"),
    ("training.micro_batch_size=0", "training.micro_batch_size: must be at least 1"),
    ("training.train_iters=-1", "training.train_iters"),
])
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("(", r"\(").replace(".", r"\.")):
        load_config(TINY, [override])


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_2_and_3_are_rejected_with_pipeline_parallelism(stage: int) -> None:
    with pytest.raises(ConfigError, match=f"parallel.zero_stage: ZeRO-{stage} is incompatible"):
        load_config(TINY, [f"parallel.zero_stage={stage}",
                           "parallel.pipeline_model_parallel_size=2"])
    assert load_config(TINY, ["parallel.zero_stage=1", "parallel.pipeline_model_parallel_size=2"])


def test_compiled_layers_are_rejected_with_zero_3() -> None:
    with pytest.raises(ConfigError, match="model.compile_layers: not supported with ZeRO-3"):
        load_config(TINY, ["model.compile_layers=true", "parallel.zero_stage=3"])
    assert load_config(TINY, ["model.compile_layers=true", "parallel.zero_stage=2"])



def test_document_attention_is_rejected_with_transformer_engine() -> None:
    with pytest.raises(ConfigError, match="data.document_attention: not supported with "
                                          "model.transformer_impl=transformer_engine"):
        load_config(TINY, ["data.document_attention=true",
                           "model.transformer_impl=transformer_engine"])
    assert load_config(TINY, ["data.document_attention=true"]).data.document_attention

def test_batch_arithmetic_checks_the_world_size() -> None:
    cfg = load_config(TINY, ["training.micro_batch_size=4", "training.global_batch_size=16",
                             "parallel.tensor_model_parallel_size=2"])
    cfg.validate(world_size=4)  # DP 2: 16 = 4 x 2 x 2 accumulation steps
    with pytest.raises(ConfigError, match="training.global_batch_size: 16 is not divisible"):
        cfg.validate(world_size=16)  # DP 8: 4 x 8 = 32 does not divide 16
    with pytest.raises(ConfigError, match="world size 3 is not divisible by TP x PP = 2"):
        cfg.validate(world_size=3)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("model:\n  hidden: 3\n")
    with pytest.raises(ConfigError, match=r"bad_key\.yaml: .*model\.hidden"):
        load_config(bad_key)
    bad_yaml = tmp_path / "bad_yaml.yaml"
    bad_yaml.write_text("model:\n  hidden_size: [1,\n")
    with pytest.raises(ConfigError, match=r"(?s)bad_yaml\.yaml: invalid YAML.*line 3"):
        load_config(bad_yaml)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- model\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(not_mapping)
    bad_section = tmp_path / "section.yaml"
    bad_section.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="a section must be a mapping"):
        load_config(bad_section)


def test_padded_vocab_size_is_a_multiple_of_divisor_times_tp() -> None:
    assert padded_vocab_size(32000, 128, 1) == 32000
    assert padded_vocab_size(32000, 128, 2) == 32000
    assert padded_vocab_size(32001, 128, 1) == 32128
    assert padded_vocab_size(50257, 128, 8) == 51200
