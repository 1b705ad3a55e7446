"""The `paperpack meap pretrain` / `paperpack meap sft` commands, run in-process through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from paperpack.core.cli import main
from paperpack.core.hf import default_corpus
from paperpack.core.testing.contracts import assert_no_partial_output


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def vocabulary_rows(folder: Path) -> int:
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        return int(weights.get_slice("model.embed_tokens.weight").get_shape()[0])


@pytest.mark.slow
def test_pretrain_writes_a_model_with_the_mask_token(tiny_lm_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [{"text": line} for line in default_corpus(60, seed=4)])
    output = tmp_path / "out" / "meap-model"
    argv = [
        "meap",
        "pretrain",
        "--model",
        str(tiny_lm_dir),
        "--data",
        str(data),
        "--output",
        str(output),
        "--max-steps",
        "2",
        "--max-length",
        "64",
        "--batch-size",
        "4",
    ]
    assert main(argv) == 0
    tokenizer = json.loads((output / "tokenizer.json").read_text())
    assert any(token["content"] == "[MASK]" for token in tokenizer["added_tokens"])
    assert vocabulary_rows(output) == vocabulary_rows(tiny_lm_dir) + 1
    assert sorted(p.name for p in output.parent.iterdir()) == ["meap-model"]  # no staging folder left


@pytest.mark.slow
def test_sft_prompt_completion(tiny_lm_dir: Path, tmp_path: Path) -> None:
    lines = default_corpus(40, seed=5)
    records = [{"prompt": lines[2 * i], "completion": " " + lines[2 * i + 1]} for i in range(20)]
    data = write_jsonl(tmp_path / "sft.jsonl", records)
    output = tmp_path / "sft-model"
    argv = [
        "meap",
        "sft",
        "--model",
        str(tiny_lm_dir),
        "--data",
        str(data),
        "--output",
        str(output),
        "--max-steps",
        "2",
        "--max-length",
        "64",
        "--batch-size",
        "4",
        "--min-answer-tokens",
        "3",
        "--layout",
        "concat",
    ]
    assert main(argv) == 0
    assert (output / "model.safetensors").is_file() and (output / "tokenizer.json").is_file()


def test_bad_input_fails_cleanly(
    tiny_lm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [{"text": "one two"}])
    output = tmp_path / "out"
    common = ["--model", str(tiny_lm_dir), "--data", str(data), "--output", str(output)]

    assert main(["meap", "pretrain", *common, "--mask-ratio", "1.0"]) == 2
    assert "`mask_ratio` must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert main(["meap", "pretrain", *common, "--no-add-mask-token"]) == 2
    assert "no mask token '[MASK]'" in capsys.readouterr().err
    assert (
        main(["meap", "pretrain", *common[:2], "--data", str(tmp_path / "missing.jsonl"), *common[4:]]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["meap", "sft", *common]) == 2
    assert "needs string fields 'prompt' and 'completion'" in capsys.readouterr().err
    assert main(["meap", "pretrain", *common[:4], "--output", str(tiny_lm_dir / "inside")]) == 2
    assert "overlaps input" in capsys.readouterr().err
    assert_no_partial_output(output)
    output.mkdir()
    assert main(["meap", "pretrain", *common]) == 2
    assert "already exists" in capsys.readouterr().err
