"""The LoRA flags of training commands, and adapter folders read as the models they stand for."""

import json
import shutil

import pytest
import torch

from paperpack.core.arguments import ArgumentParser
from paperpack.core.commands import add_lora_arguments
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.hf import load_model_and_tokenizer, lora_config, wrap_lora


def _parse(*argv):
    parser = ArgumentParser(prog="paperpack thing train")
    add_lora_arguments(parser)
    return parser.parse_args(list(argv))


def test_lora_flags_give_peft_configs_and_refuse_bad_values(capsys):
    assert lora_config(_parse()) is None
    config = lora_config(_parse("--lora-r", "8", "--lora-target-modules", "q_proj", "v_proj"))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.0)  # α = 2r by default
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    config = lora_config(_parse("--lora-r", "4", "--lora-alpha", "1", "--lora-dropout", "0.1"))
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (4, 1.0, 0.1, None)
    for argv, message in [
        (["--lora-r", "0"], "`--lora-r` must be an integer >= 1, got 0"),
        (["--lora-r", "2", "--lora-alpha", "0"], "`--lora-alpha` must be a number > 0, got '0'"),
        (["--lora-r", "2", "--lora-dropout", "1"], "`--lora-dropout` must be a number in [0, 1), got '1'"),
    ]:
        with pytest.raises(SystemExit):
            _parse(*argv)
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"--lora-alpha, --lora-target-modules needs --lora-r"):
        lora_config(_parse("--lora-alpha", "4", "--lora-target-modules", "q_proj"))


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_an_adapter_folder_loads_as_its_base_with_the_adapter_merged(
    architecture, tiny_lm_dir, tiny_gpt2_dir, tmp_path
):
    base_dir = tiny_lm_dir if architecture == "llama" else tiny_gpt2_dir
    model, tokenizer = load_model_and_tokenizer(base_dir, device="cpu", dtype="float32")
    peft_model = wrap_lora(model, lora_config(_parse("--lora-r", "4")))  # PEFT's default targets
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([tokenizer("2 + 3 = 5")["input_ids"]])
    expected = peft_model(ids).logits
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(base_dir.resolve())  # found from any working folder

    loaded, loaded_tokenizer = load_model_and_tokenizer(adapter, device="cpu", dtype="float32")
    assert not any("lora" in name for name, _ in loaded.named_parameters())  # merged: a plain model
    torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_adapter_folders_that_cannot_load_fail_clearly(tiny_lm_dir, tmp_path):
    model, _ = load_model_and_tokenizer(tiny_lm_dir, device="cpu", dtype="float32")
    with pytest.raises(ConfigError, match=r"--lora-target-modules \(nope\) fits no module.*q_proj"):
        wrap_lora(model, lora_config(_parse("--lora-r", "2", "--lora-target-modules", "nope")))
    adapter = tmp_path / "adapter"
    wrap_lora(model, lora_config(_parse("--lora-r", "2"))).save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())

    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "gone"}))
    with pytest.raises(CheckpointNotFoundError, match="adapter on 'gone', which is not a local model folder"):
        load_model_and_tokenizer(moved)
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(CheckpointNotFoundError, match="names no base model"):
        load_model_and_tokenizer(moved)
    (moved / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read adapter_config.json"):
        load_model_and_tokenizer(moved)
    (moved / "adapter_config.json").write_text(json.dumps(config))
    (moved / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="without adapter_model.safetensors"):
        load_model_and_tokenizer(moved)
