"""``paperpack hrp-lora init`` through the real CLI: three model families, stock PEFT loading, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from paperpack.core import cli
from paperpack.core.files import OUTPUT_MARKER
from paperpack.core.testing.contracts import check_cli_fails_cleanly, snapshot_tree
from paperpack.hrp_lora.cli import CONFIG_FILE


def _argv(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "hrp-lora", "init", "--model", str(model), "--data", str(data), "--output", str(output),
        "--rank", "4", "--preheat-rank", "16", "--preheat-steps", "3", "--preheat-lr", "1e-3",
        "--batch-size", "4", "--max-length", "24", "--device", "cpu", "--no-progress", *extra,
    ]  # fmt: skip


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_init_writes_an_adapter_stock_peft_loads_on_the_unmodified_base(
    family, model_dirs, texts_file, tmp_path, capsys
) -> None:
    model_dir = model_dirs[family]
    before = snapshot_tree([model_dir, texts_file])
    output = tmp_path / "init"
    assert cli.main(_argv(model_dir, texts_file, output)) == 0
    assert "rank-4 LoRA initialized by HRP" in capsys.readouterr().out
    assert snapshot_tree([model_dir, texts_file]) == before, "an input was modified"
    assert {"adapter_config.json", "adapter_model.safetensors", CONFIG_FILE, OUTPUT_MARKER} <= {
        p.name for p in output.iterdir()
    }
    record = json.loads((output / CONFIG_FILE).read_text())
    assert record["hrp"]["preheat_rank"] == 16 and len(record["preheat_losses"]) == 3
    assert record["lora"]["r"] == 4 and record["base_model"] == str(model_dir)

    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    expected = _logits(base, ids)
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dir), output, is_trainable=True
    )
    assert torch.equal(_logits(loaded, ids), expected)  # init="direction": B = 0, the base function
    factors = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert factors and all(p.requires_grad for p in factors.values())
    for name, p in factors.items():
        if "lora_B" in name:
            assert not p.any(), name
        else:
            torch.testing.assert_close(p.norm(dim=1), torch.full((4,), 3**-0.5), atol=1e-5, rtol=0)


def test_overwrite_replaces_an_earlier_output_only_when_asked(model_dirs, texts_file, tmp_path) -> None:
    output = tmp_path / "init"
    assert cli.main(_argv(model_dirs["llama"], texts_file, output, "--init", "carry_over")) == 0
    check_cli_fails_cleanly(_argv(model_dirs["llama"], texts_file, output), "--overwrite", paths=[tmp_path])
    assert cli.main(_argv(model_dirs["llama"], texts_file, output, "--overwrite", "--seed", "3")) == 0
    assert json.loads((output / CONFIG_FILE).read_text())["hrp"]["seed"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rank", "32"], r"`--preheat-rank` \(16\) must be >= the adapter's rank r \(32"),
        (["--preheat-steps", "0"], "`--preheat-steps` must be >= 1, got 0"),
        (["--preheat-lr", "nan"], "`--preheat-lr` must be a finite number"),
        (
            ["--target-modules", "query_proj"],
            r"`target_modules` \['query_proj'\] matches no module|query_proj",
        ),
        (["--init", "pissa"], "`--init` must be one of 'direction', 'carry_over', got 'pissa'"),
        (["--init", "carry_over", "--scale", "unit"], "`--scale` applies to init='direction' only"),
        (["--lr", "1e-3"], "--lr"),
        (["--rank", "0"], "`--rank` must be >= 1, got 0"),
        (["--lora-dropout", "1.5"], r"`--lora-dropout` must be in \[0, 1\), got 1.5"),
        (["--use-dora", "--init", "carry_over"], "init='carry_over' with use_dora=True is not supported"),
    ],
)
def test_bad_flags_fail_cleanly(extra, message, model_dirs, texts_file, tmp_path) -> None:
    check_cli_fails_cleanly(
        _argv(model_dirs["llama"], texts_file, tmp_path / "out", *extra), message,
        paths=[model_dirs["llama"], texts_file, tmp_path], output=tmp_path / "out",
    )  # fmt: skip


def test_bad_files_fail_cleanly(model_dirs, texts_file, tmp_path) -> None:
    model = model_dirs["llama"]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": \n')
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"prompt": "a"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    cases = [
        (_argv(tmp_path / "missing", texts_file, tmp_path / "out"), "not a model folder"),
        (_argv(model, tmp_path / "missing.jsonl", tmp_path / "out"), "does not exist"),
        (_argv(model, bad_json, tmp_path / "out"), r"bad.jsonl:2 is not valid JSON"),
        (_argv(model, no_text, tmp_path / "out"), r"no_text.jsonl:1 needs a string field 'text'"),
        (_argv(model, empty, tmp_path / "out"), "holds no records"),
        (_argv(model, texts_file, model / "adapter"), "overlap|input"),
        (_argv(model, texts_file, tmp_path / "used"), "--output"),
        (["hrp-lora", "init", "--data", str(texts_file), "--output", str(tmp_path / "out")], "--model"),
    ]
    for argv, message in cases:
        check_cli_fails_cleanly(argv, message, paths=[model, texts_file, tmp_path], output=tmp_path / "out")


def test_bare_command_prints_help_and_exits_2(capsys) -> None:
    assert cli.main(["hrp-lora"]) == 2
    captured = capsys.readouterr()
    assert "init" in captured.out + captured.err
