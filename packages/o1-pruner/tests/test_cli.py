"""``paperpack o1-pruner presample | train | evaluate`` through the real CLI, on two architectures; bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import Qwen2Config, Qwen2ForCausalLM

from paperpack.core.cli import main
from paperpack.core.testing.contracts import assert_no_partial_output

PROBLEMS = [{"prompt": f"Q: what is {i} + 1? A:", "answer": str(i + 1)} for i in range(6)]


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


@pytest.fixture(scope="module")
def qwen_dir(tiny_lm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2 model with tied embeddings and the tiny tokenizer: a second architecture."""
    _, tokenizer = tiny_lm
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    folder = tmp_path_factory.mktemp("qwen")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


SMALL = [
    "--num-presamples",
    "3",
    "--presample-max-new-tokens",
    "6",
    "--presample-batch-size",
    "4",
    "--no-progress",
]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_presample_train_evaluate(arch, tiny_lm_dir, qwen_dir, problems_file, tmp_path, capsys) -> None:  # noqa: PLR0917
    model = str(tiny_lm_dir if arch == "llama" else qwen_dir)
    samples, trained = tmp_path / "samples", tmp_path / "trained"
    assert (
        main(
            [
                "o1-pruner",
                "presample",
                "--model",
                model,
                "--data",
                str(problems_file),
                "--output",
                str(samples),
                *SMALL,
            ]
        )
        == 0
    )
    assert "training samples from 6 problems (K=3)" in capsys.readouterr().out
    assert len((samples / "train.jsonl").read_text().splitlines()) == 12
    assert (
        main(
            [
                "o1-pruner",
                "train",
                "--model",
                model,
                "--data",
                str(samples),
                "--output",
                str(trained),
                "--max-steps",
                "2",
                "--per-device-train-batch-size",
                "4",
                "--learning-rate",
                "1e-3",
                "--save-steps",
                "1",
                "--save-strategy",
                "steps",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (trained / "model.safetensors").is_file() and (trained / "checkpoint-2").is_dir()
    assert (trained / "training_args.json").is_file() and not (trained / "training_args.bin").exists()
    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "o1-pruner",
                "evaluate",
                "--model",
                str(trained),
                "--data",
                str(problems_file),
                "--max-new-tokens",
                "8",
                "--baseline-accuracy",
                "0.5",
                "--baseline-length",
                "8",
                "--output",
                str(report),
                "--no-progress",
            ]
        )
        == 0
    )
    figures = json.loads(report.read_text())
    assert figures["problems"] == 6 and 1 <= figures["mean_length"] <= 8 and "aes_sign_agnostic" in figures


def test_train_with_lora_and_resume(tiny_lm_dir, problems_file, tmp_path) -> None:
    samples, trained = tmp_path / "samples", tmp_path / "lora"
    assert (
        main(
            [
                "o1-pruner",
                "presample",
                "--model",
                str(tiny_lm_dir),
                "--data",
                str(problems_file),
                "--output",
                str(samples),
                *SMALL,
            ]
        )
        == 0
    )
    common = [
        "o1-pruner",
        "train",
        "--model",
        str(tiny_lm_dir),
        "--data",
        str(samples / "train.jsonl"),
        "--output",
        str(trained),
        "--lora-r",
        "4",
        "--lora-target-modules",
        "q_proj",
        "v_proj",
        "--per-device-train-batch-size",
        "4",
        "--save-strategy",
        "steps",
        "--save-steps",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main([*common, "--max-steps", "1"]) == 0
    assert (trained / "adapter_model.safetensors").is_file()
    assert main([*common, "--max-steps", "2", "--resume", "last"]) == 0
    assert json.loads((trained / "o1_pruner_train.json").read_text())["steps"] == 2


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["presample", "--num-presamples", "1"], "--num-presamples must be >= 2, got 1"),
        (["presample", "--lam", "-1"], "--lam must be >= 0, got -1"),
        (
            ["presample", "--presample-max-new-tokens", "4000"],
            "problem 0 has a prompt of .* tokens; with --presample-max-new-tokens=4000 .* beyond the model's context of 2048",
        ),
        (["presample", "--grader", "exact"], "invalid choice: 'exact'"),
        (["train", "--max-steps", "1"], "neither a presample folder with train.jsonl nor a file"),
        (["train", "--cliprange", "2", "--max-steps", "1"], r"--cliprange must be in \(0, 1\)"),
        (["evaluate", "--baseline-accuracy", "0.5"], "--baseline-accuracy and --baseline-length go together"),
        (
            ["evaluate", "--baseline-accuracy", "0", "--baseline-length", "9"],
            "--baseline-accuracy must be > 0",
        ),
    ],
)
def test_bad_input_through_the_cli(argv, match, tiny_lm_dir, problems_file, tmp_path, capsys) -> None:  # noqa: PLR0917
    command, *rest = argv
    data = (
        str(tmp_path / "missing") if command == "train" and "--cliprange" not in rest else str(problems_file)
    )
    if "--cliprange" in rest:
        data = str(tmp_path / "train.jsonl")
        Path(data).write_text(
            json.dumps({"prompt_ids": [1, 5], "completion_ids": [6, 2], "weight": 1.0}) + "\n"
        )
    before = sorted(p.name for p in tmp_path.iterdir())
    output = tmp_path / "out"
    argv_full = ["o1-pruner", command, "--model", str(tiny_lm_dir), "--data", data, *rest, "--no-progress"]
    if command != "evaluate":
        argv_full += ["--output", str(output)]
    try:
        code = main(argv_full)
    except SystemExit as exit_:  # argparse's own errors (an unknown choice) exit 2 with the usage
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(match, err.strip().splitlines()[-1]), err
    assert_no_partial_output(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_problem_without_answer_and_a_raising_grader(tiny_lm_dir, tmp_path, capsys) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "2 + 2 ="}) + "\n")
    assert (
        main(
            [
                "o1-pruner",
                "presample",
                "--model",
                str(tiny_lm_dir),
                "--data",
                str(data),
                "--output",
                str(tmp_path / "out"),
                *SMALL,
            ]
        )
        == 2
    )
    assert "needs a string field 'answer'" in capsys.readouterr().err
    data.write_text(json.dumps({"prompt": "2 + 2 =", "answer": "four"}) + "\n")
    assert (
        main(
            [
                "o1-pruner",
                "presample",
                "--model",
                str(tiny_lm_dir),
                "--data",
                str(data),
                "--output",
                str(tmp_path / "out"),
                *SMALL,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "the grader raised on problem 0 (answer 'four'), sample 0: ValueError: last_number_grader needs a numeric answer"
        in err
    )


def test_train_refuses_a_foreign_non_empty_output(tiny_lm_dir, tmp_path, capsys) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt_ids": [1, 5], "completion_ids": [6, 2], "weight": 1.0}) + "\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        assert (
            main(
                [
                    "o1-pruner",
                    "train",
                    "--model",
                    str(tiny_lm_dir),
                    "--data",
                    str(data),
                    "--output",
                    str(mine),
                    "--max-steps",
                    "1",
                    *extra,
                ]
            )
            == 2
        )
        assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
