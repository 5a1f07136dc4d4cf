"""Export to Hugging Face: logits, greedy generation and tokenization equal the training side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from megatron_ngpt.cli import checkpoint_to_hf
from megatron_ngpt.hf.export import ExportError, export_to_hf
from megatron_ngpt.hf.state_dict_adapter import StateDictError, ngpt_scale_multipliers
from megatron_ngpt.models.scaling import ScalingVector
from tests.hf.conftest import build_model, hf_config, sample_text
from tests.hf.parity import (
    assert_logit_parity,
    greedy_decode,
    language_model_logits,
    load_hf_model,
)

VARIANTS = {
    "ngpt": ("ngpt",),
    "gpt2_rmsnorm": ("gpt2",),
    "gpt2_layernorm": ("gpt2", "model.normalization=LayerNorm"),
}
HF_CLASSES = {"ngpt": "NGPTForCausalLM", "gpt2_rmsnorm": "LlamaForCausalLM",
              "gpt2_layernorm": "StableLmForCausalLM"}


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_scale_multipliers_match_the_model(single_rank, sp_model):
    config = hf_config("ngpt", sp_model)
    model = build_model(config)
    expected = ngpt_scale_multipliers(config.model)
    seen = 0
    for name, module in model.named_modules():
        if isinstance(module, ScalingVector):
            suffix = next(s for s in expected if f"{name}.weight".endswith(s))
            assert module.multiplier == pytest.approx(expected[suffix]), name
            seen += 1
    assert seen == 1 + 5 * model.config.num_layers


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_language_model(exported, variant):
    model, folder = exported(*VARIANTS[variant])
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [HF_CLASSES[variant]]
    assert config["tie_word_embeddings"] is False
    assert (folder / "model.safetensors").is_file()
    assert assert_logit_parity(model, folder, _tokens(2, 48), atol=1e-4) < 1e-4


@pytest.mark.parametrize("variant", ["ngpt", "gpt2_rmsnorm"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_equals_greedy_decoding(exported, variant, use_cache):
    model, folder = exported(*VARIANTS[variant])
    prompt = _tokens(2, 8, seed=2)
    expected = greedy_decode(model, prompt, 16)
    hf = load_hf_model(folder)
    got = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                      min_new_tokens=16, do_sample=False, use_cache=use_cache,
                      pad_token_id=hf.config.eos_token_id)
    assert torch.equal(got, expected)


def test_ngpt_left_padding_does_not_change_generation(exported):
    """lm-eval generates from left-padded batches: padding must be masked and positions shifted."""
    _, folder = exported("ngpt")
    hf = load_hf_model(folder)
    short, long = _tokens(1, 5, seed=3), _tokens(1, 9, seed=4)
    pad = hf.config.eos_token_id
    batch = torch.cat([torch.cat([torch.full((1, 4), pad), short], 1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 4), torch.ones(1, 5)], 1), torch.ones(1, 9)]).long()
    options = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=pad)
    together = hf.generate(batch, attention_mask=mask, **options)
    for row, single in enumerate((short, long)):
        alone = hf.generate(single, attention_mask=torch.ones_like(single), **options)
        assert torch.equal(together[row, -6:], alone[0, -6:])


@pytest.mark.slow
def test_ngpt_folder_loads_without_this_package(exported, tmp_path):
    """The copied modeling files are self-contained: trust_remote_code needs only transformers."""
    model, folder = exported("ngpt")
    tokens = _tokens(1, 16)
    torch.save(tokens, tmp_path / "tokens.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "assert not [k for k in sys.modules if k.startswith('megatron')], 'imported megatron'\n"
        "assert type(m).__module__.startswith('transformers_modules'), type(m).__module__\n"
        f"t = torch.load({str(tmp_path / 'tokens.pt')!r})\n"
        f"torch.save(m(t).logits.detach(), {str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path,
                   env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                        "HOME": str(tmp_path)})
    expected = language_model_logits(model, tokens)
    assert (torch.load(tmp_path / "logits.pt") - expected).abs().max() < 1e-4


def test_tokenizer_encodes_like_sentencepiece(exported, sp_model):
    import sentencepiece
    from transformers import AutoTokenizer

    _, folder = exported("ngpt")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    texts = [*sample_text(7, 40).splitlines(), sample_text(8, 5), " leading", "  two leading",
             "trailing  ", "tabs\tand\nnew lines\n\n", "digits 0123456789 3.5", "Ünïcödé 日本 🙂",
             "▁literal metaspace", "mixed CASE and punctuation!?;:", ""]
    for text in texts:
        assert tok(text)["input_ids"] == sp.encode(text), text
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert (tok.bos_token_id, tok.eos_token_id) == (sp.bos_id(), sp.eos_id())


def test_bf16_export_is_bf16(exported, sp_model, tmp_path):
    model, _ = exported("ngpt")
    folder = export_to_hf(hf_config("ngpt", sp_model), model.state_dict(), sp_model,
                          tmp_path / "bf16", dtype="bf16")
    hf = load_hf_model(folder, dtype="auto")
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"


def test_occupied_output_folder_needs_overwrite(exported, sp_model, tmp_path):
    model, _ = exported("gpt2")
    config, state = hf_config("gpt2", sp_model), model.state_dict()
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty.*overwrite"):
        export_to_hf(config, state, sp_model, out, "fp32")
    assert (out / "old.txt").is_file()
    with pytest.raises(ExportError, match="not an earlier export"):
        export_to_hf(config, state, sp_model, out, "fp32", overwrite=True)
    assert (out / "old.txt").read_text() == "keep me"


def test_overwrite_replaces_an_earlier_export(exported, sp_model, tmp_path):
    model, _ = exported("gpt2")
    config, state = hf_config("gpt2", sp_model), model.state_dict()
    out = export_to_hf(config, state, sp_model, tmp_path / "out", "fp32")
    (out / "stale.txt").write_text("from the earlier export")
    export_to_hf(config, state, sp_model, out, "bf16", overwrite=True)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_bad_state_dict_leaves_nothing_behind(exported, sp_model, tmp_path):
    model, _ = exported("ngpt")
    state = dict(model.state_dict())
    del state["layers.1.layer.mlp.s_v.weight"]
    with pytest.raises(StateDictError, match="layers.1.layer.mlp.s_v.weight"):
        export_to_hf(hf_config("ngpt", sp_model), state, sp_model, tmp_path / "out", "fp32")
    gpt2_state = exported("gpt2")[0].state_dict()
    with pytest.raises(StateDictError, match="unexpected parameters|has no"):
        export_to_hf(hf_config("ngpt", sp_model), gpt2_state, sp_model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_tool_reports_missing_checkpoint(tmp_path, capsys):
    code = checkpoint_to_hf.main(["--checkpoint", str(tmp_path / "no_run"),
                                  "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error:") and "no_run" in err
    assert not (tmp_path / "out").exists()


def test_every_exported_file_is_readable_by_all(exported):
    """Folders 0755 and files 0644, model.safetensors too (it was written 0600 once), whatever
    mode the staging folder and the writers chose."""
    _, folder = exported("ngpt")
    modes = {path.name: path.stat().st_mode & 0o777 for path in [folder, *folder.rglob("*")]}
    assert modes.pop(folder.name) == 0o755 and modes["model.safetensors"] == 0o644
    assert modes and set(modes.values()) == {0o644}, modes
