"""`paperpack tezo finetune` through the real CLI: the one output layout, resume, and every bad input refused
with a clear message, exit status 2 and the file system exactly as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from paperpack.core.cli import main
from paperpack.core.files import OUTPUT_MARKER
from paperpack.core.testing.contracts import check_cli_fails_cleanly


@pytest.fixture
def data_file(tmp_path: Path, tiny_texts: list[str]) -> Path:
    path = tmp_path / "inputs" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in tiny_texts[:16]))
    return path


def finetune(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "tezo", "finetune", "--model", str(model), "--data", str(data), "--output", str(output),
        "--max-steps", "4", "--per-device-train-batch-size", "4", "--learning-rate", "1e-3", "--zo-rank", "2",
        "--save-steps", "2", "--device", "cpu", "--no-progress", "--max-length", "24", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_one_layout_resume_and_no_pickle(
    tiny_lm_dir: Path, data_file: Path, tmp_path: Path, capsys: Any
) -> None:
    from paperpack.core.hf import load_model_and_tokenizer

    output = tmp_path / "run"
    assert (
        main(finetune(tiny_lm_dir, data_file, output, "--eval-data", str(data_file), "--eval-steps", "2"))
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    top = {path.name for path in output.iterdir()}
    expected = {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training_args.json",
        "tezo_summary.json",
    }
    assert expected | {OUTPUT_MARKER, "checkpoint-2", "checkpoint-4"} <= top
    assert not list(output.rglob("training_args.bin")), "a pickle was left in the output"
    assert (output / "checkpoint-4" / "optimizer.pt").is_file()
    arguments = json.loads((output / "training_args.json").read_text())
    assert (arguments["zo_rank"], arguments["lr_scheduler_type"], arguments["max_steps"]) == (
        2,
        "constant",
        4,
    )
    summary = json.loads((output / "tezo_summary.json").read_text())
    assert (summary["method"], summary["steps"]) == ("tezo_adam", 4)
    assert summary["zo_state_bytes"] > 0 and "eval_loss" in summary
    load_model_and_tokenizer(output, device="cpu")  # the output is the next command's input as it is

    # A rerun needs --overwrite or --resume; --resume continues to a longer run.
    check_cli_fails_cleanly(finetune(tiny_lm_dir, data_file, output), "--overwrite", paths=[tmp_path])
    longer = finetune(tiny_lm_dir, data_file, output, "--resume")
    longer[longer.index("--max-steps") + 1] = "6"
    assert main(longer) == 0
    assert json.loads((output / "tezo_summary.json").read_text())["steps"] == 6
    assert (output / "checkpoint-6").is_dir()


@pytest.mark.slow
def test_both_spellings_a_config_file_and_another_architecture(
    tiny_gpt2_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "inputs" / "run.yaml"
    recipe.write_text("zo_method: lozo\nlearning_rate: 5e-4\nzo_lozo_interval: 2\nmax_steps: 3\n")
    output = tmp_path / "gpt2-run"
    argv = finetune(
        tiny_gpt2_dir, data_file, output, "--config", str(recipe), "--zo_eps", "1e-2", "--save_steps", "3"
    )
    argv.remove("--max-steps"), argv.remove("4")  # from the config file
    assert main(argv) == 0
    arguments = json.loads((output / "training_args.json").read_text())
    # The file's values, except learning_rate: a flag typed on the command line wins over the file.
    assert (arguments["zo_method"], arguments["learning_rate"], arguments["zo_eps"]) == ("lozo", 1e-3, 1e-2)
    assert (arguments["max_steps"], arguments["save_steps"]) == (3, 3)
    assert (output / "checkpoint-3").is_dir() and (output / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-steps", "0"], r"`--max-steps` must be >= 1 \(or -1: train `--num-train-epochs`\), got 0"),
        (["--max-steps", "-5"], r"`--max-steps` must be >= 1 \(or -1: train `--num-train-epochs`\), got -5"),
        (["--num-train-epochs", "0", "--max-steps", "-1"], r"`--num-train-epochs` must be > 0, got 0"),
        (["--learning-rate", "nan"], r"`--learning-rate` must be a finite number, got 'nan'"),
        (["--adam-beta1", "1.5"], r"`--adam-beta1` must be in \[0, 1\), got 1.5"),
        (["--zo-rank", "0"], r"`--zo-rank` must be >= 1, got 0"),
        (["--zo_eps", "0"], r"`--zo_eps` must be > 0, got 0"),
        (["--zo-method", "mezo_lion"], r"`--zo-method` must be one of 'mezo_sgd', .*, got 'mezo_lion'"),
        (["--fp16"], r"`--fp16` must be False for zeroth-order training"),
        (["--lr", "1e-5"], r"unrecognized arguments: --lr"),
        (["--steps", "5"], r"unrecognized arguments: --steps"),
        (["--resume"], r"`--resume` continues an earlier run of `tezo finetune`"),
    ],
)
def test_bad_input_leaves_the_file_system_as_it_was(
    tiny_lm_dir: Path, data_file: Path, extra: list[str], message: str
) -> None:
    root = data_file.parent.parent
    argv = finetune(tiny_lm_dir, data_file, root / "run", *extra)
    check_cli_fails_cleanly(argv, message, paths=[root, tiny_lm_dir], output=root / "run")


@pytest.mark.slow
def test_bad_paths_and_data(tiny_lm_dir: Path, data_file: Path, tmp_path: Path) -> None:
    root = data_file.parent.parent
    positional = ["tezo", "finetune", str(tiny_lm_dir), "--data", str(data_file), "--output", str(root / "o")]
    check_cli_fails_cleanly(positional, r"unrecognized arguments|--model", paths=[root])
    check_cli_fails_cleanly(
        finetune(tiny_lm_dir, data_file, tiny_lm_dir / "inside"), "overlap|input", paths=[tiny_lm_dir]
    )
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("keep me")
    check_cli_fails_cleanly(finetune(tiny_lm_dir, data_file, used), "--output", paths=[tmp_path])
    check_cli_fails_cleanly(
        finetune(tiny_lm_dir, root / "missing.jsonl", root / "new"), "missing.jsonl", paths=[root]
    )
    latin = data_file.parent / "latin.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    check_cli_fails_cleanly(
        finetune(tiny_lm_dir, latin, root / "new"), r"latin.jsonl:1 is not UTF-8", paths=[root]
    )
    check_cli_fails_cleanly(["tezo"], r"usage: paperpack tezo", paths=[root])
