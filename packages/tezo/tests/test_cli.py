"""`paperpack tezo finetune` end to end on the tiny model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paperpack.core.cli import main
from paperpack.core.hf import default_corpus
from paperpack.core.testing.contracts import assert_no_partial_output


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    lines = default_corpus(num_lines=16, seed=2)
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    return path


def _finetune(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "tezo", "finetune", str(model), "--data", str(data), "--output", str(output), "--steps", "4",
        "--batch-size", "4", "--lr", "1e-3", "--rank", "2", "--save-steps", "2", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_finetune_writes_model_checkpoints_and_resumes(
    tiny_lm_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    assert (
        main(_finetune(tiny_lm_dir, data_file, output, "--eval-data", str(data_file), "--eval-steps", "2"))
        == 0
    )
    model = output / "model"
    assert (model / "model.safetensors").is_file()
    assert (model / "tokenizer.json").is_file()
    summary = json.loads((model / "tezo_summary.json").read_text())
    assert summary["method"] == "tezo_adam"
    assert summary["steps"] == 4
    assert summary["zo_state_bytes"] > 0
    assert "eval_loss" in summary
    assert (output / "checkpoints" / "checkpoint-4" / "optimizer.pt").is_file()
    assert_no_partial_output(output / ".model.partial")
    assert "wrote" in capsys.readouterr().out

    # Continue the same run to 6 steps from its last checkpoint.
    assert main([*_finetune(tiny_lm_dir, data_file, output, "--resume", "last"), "--steps", "6"]) == 0
    assert json.loads((model / "tezo_summary.json").read_text())["steps"] == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "mezo_lion"], "invalid choice: 'mezo_lion'"),
        (["--rank", "0"], "`zo_rank` must be >= 1, got 0"),
        (["--eps", "0"], "`zo_eps` must be > 0, got 0.0"),
        (["--eval-steps", "2"], "--eval-steps needs --eval-data"),
        (["--resume", "last"], "--resume last found no checkpoint"),
    ],
)
def test_finetune_rejects_bad_input(
    tiny_lm_dir: Path,
    data_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    extra: list[str],
    message: str,
) -> None:
    output = tmp_path / "bad"
    try:
        status = main(_finetune(tiny_lm_dir, data_file, output, *extra))
    except SystemExit as exit_:  # argparse rejects invalid choices itself
        status = int(exit_.code or 0)
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (output / "model").exists()


def test_finetune_refuses_overlapping_or_used_outputs(
    tiny_lm_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_finetune(tiny_lm_dir, data_file, tiny_lm_dir / "inside")) == 2
    assert "overlaps input" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("keep me")
    assert main(_finetune(tiny_lm_dir, data_file, used)) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(_finetune(tiny_lm_dir, tmp_path / "missing.jsonl", tmp_path / "new")) == 2
    assert "does not exist" in capsys.readouterr().err
