"""``paperpack o1-pruner presample | train | evaluate`` through the real CLI, on two architectures; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from paperpack.core.cli import main
from paperpack.core.files import OUTPUT_MARKER
from paperpack.core.testing.contracts import check_cli_fails_cleanly

PROBLEMS = [{"prompt": f"Q: what is {i} + 1? A:", "answer": str(i + 1)} for i in range(6)]
SMALL = ["--num-presamples", "3", "--presample-max-new-tokens", "6", "--presample-batch-size", "4"]
QUIET = ["--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


@pytest.fixture(scope="module")
def qwen_dir(tiny_qwen2_dir: Path) -> Path:
    """The second architecture: the core's tiny Qwen2 with tied embeddings."""
    return tiny_qwen2_dir


@pytest.fixture(scope="module")
def presampled(tiny_lm_dir, problems_file, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A presample folder of the Llama (reference log-probabilities stored, the default)."""
    folder = tmp_path_factory.mktemp("presampled") / "samples"
    argv = ["o1-pruner", "presample", "--model", str(tiny_lm_dir), "--data", str(problems_file)]
    assert main([*argv, "--output", str(folder), *SMALL, *QUIET]) == 0
    return folder


def _model(arch: str, tiny_lm_dir: Path, qwen_dir: Path) -> str:
    return str(tiny_lm_dir if arch == "llama" else qwen_dir)


def _train(model: str, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "o1-pruner", "train", "--model", model, "--data", str(data), "--output", str(output),
        "--max-steps", "2", "--per-device-train-batch-size", "4", "--learning-rate", "1e-3",
        "--save-strategy", "steps", "--save-steps", "1", *QUIET, *extra,
    ]  # fmt: skip


def test_help_imports_no_torch() -> None:
    code = (
        "import sys\nfrom paperpack.core.cli import main\ntry:\n    main(['o1-pruner', '--help'])\n"
        "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_presample_train_evaluate(arch, tiny_lm_dir, qwen_dir, problems_file, tmp_path, capsys) -> None:  # noqa: PLR0917
    model = _model(arch, tiny_lm_dir, qwen_dir)
    samples, trained, report = tmp_path / "samples", tmp_path / "trained", tmp_path / "eval.json"
    config = tmp_path / "presample.yaml"
    config.write_text("num_presamples: 3\npresample_max_new_tokens: 6\npresample_batch_size: 4\n")
    argv = [
        "o1-pruner",
        "presample",
        "--model",
        model,
        "--data",
        str(problems_file),
        "--output",
        str(samples),
    ]
    assert main([*argv, "--config", str(config), "--store-ref-logps", *QUIET]) == 0
    assert "training samples from 6 problems (K=3)" in capsys.readouterr().out
    records = [json.loads(line) for line in (samples / "train.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(len(r["ref_logps"]) == len(r["completion_ids"]) for r in records)
    assert (samples / OUTPUT_MARKER).is_file()
    # The reference pass at every step, from the model itself (the stored log-probabilities dropped).
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({k: r[k] for k in ("prompt_ids", "completion_ids", "weight")}) + "\n"
                            for r in records))  # fmt: skip
    for data, output in ((samples, trained), (bare, tmp_path / "trained-bare")):
        assert main(_train(model, data, output)) == 0
        assert (output / "model.safetensors").is_file() and (output / "checkpoint-2").is_dir()
        assert (output / "training_args.json").is_file() and not list(output.rglob("training_args.bin"))
        assert (output / "checkpoint-1" / "training_args.json").is_file()
    evaluate = ["o1-pruner", "evaluate", "--model", str(trained), "--data", str(problems_file)]
    extra = ["--max-new-tokens", "8", "--baseline-accuracy", "0.5", "--baseline-length", "8"]
    assert main([*evaluate, *extra, "--output", str(report), *QUIET]) == 0
    figures = json.loads(report.read_text())
    assert figures["problems"] == 6 and 1 <= figures["mean_length"] <= 8 and "aes_sign_agnostic" in figures
    # The figures are an output of ours: replaced with --overwrite only.
    check_cli_fails_cleanly([*evaluate, "--output", str(report), *QUIET], "--overwrite", paths=[tmp_path])
    assert main([*evaluate, "--max-new-tokens", "8", "--output", str(report), "--overwrite", *QUIET]) == 0


def test_train_with_lora_resume_and_overwrite(tiny_lm_dir, presampled, problems_file, tmp_path) -> None:
    trained = tmp_path / "lora"
    lora = ["--lora-r", "4", "--lora-target-modules", "q_proj", "v_proj"]
    argv = _train(str(tiny_lm_dir), presampled / "train.jsonl", trained, *lora)
    argv[argv.index("--max-steps") + 1] = "1"
    assert main(argv) == 0
    assert (trained / "adapter_model.safetensors").is_file()
    check_cli_fails_cleanly(argv, "--overwrite", paths=[tmp_path, presampled])
    assert main([*_train(str(tiny_lm_dir), presampled / "train.jsonl", trained, *lora), "--resume"]) == 0
    assert json.loads((trained / "o1_pruner_train.json").read_text())["steps"] == 2
    assert main([*argv, "--overwrite"]) == 0
    assert not (trained / "checkpoint-2").exists() and (trained / "checkpoint-1").is_dir()
    # The adapter folder is a model to every command: its base with the adapter merged.
    report = tmp_path / "lora.json"
    evaluate = ["o1-pruner", "evaluate", "--model", str(trained), "--data", str(problems_file)]
    assert main([*evaluate, "--max-new-tokens", "4", "--output", str(report), *QUIET]) == 0
    assert json.loads(report.read_text())["problems"] == 6


def test_presample_resume_and_overwrite(tiny_lm_dir, problems_file, presampled, tmp_path) -> None:
    argv = [
        "o1-pruner",
        "presample",
        "--model",
        str(tiny_lm_dir),
        "--data",
        str(problems_file),
        *SMALL,
        *QUIET,
    ]
    folder = tmp_path / "samples"
    assert main([*argv, "--output", str(folder)]) == 0
    first = (folder / "train.jsonl").read_text()
    # An interruption after the first batch of 4 problems: resume samples only the rest, to the same result.
    lines = (folder / "samples.jsonl").read_text().splitlines(keepends=True)
    (folder / "samples.jsonl").write_text("".join(lines[:4]) + lines[4][:10])
    (folder / "train.jsonl").unlink()
    check_cli_fails_cleanly([*argv, "--output", str(folder)], "--overwrite", paths=[tmp_path])
    assert main([*argv, "--output", str(folder), "--resume"]) == 0
    assert (folder / "train.jsonl").read_text() == first == (presampled / "train.jsonl").read_text()
    assert main([*argv, "--output", str(folder), "--overwrite", "--samples-per-problem", "1"]) == 0
    assert len((folder / "train.jsonl").read_text().splitlines()) == len(PROBLEMS)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["presample", "--num-presamples", "1"], r"`--num-presamples` must be >= 2, got 1"),
        (["presample", "--lam", "-1"], r"`--lam` must be >= 0, got -1"),
        (
            ["presample", "--presample-max-new-tokens", "4000"],
            r"`--presample-max-new-tokens`=4000 .* context",
        ),
        (
            ["presample", "--grader", "exact"],
            r"`--grader` must be one of 'last_number', 'boxed', 'math_verify', got 'exact'",
        ),
        (["presample", "--resume"], r"`--resume` continues an earlier run of `o1-pruner presample`"),
        (["train", "--max-steps", "1", "--data", "MISSING"], r"neither a presample folder with train.jsonl"),
        (["train", "--cliprange", "2"], r"`--cliprange` must be in \(0, 1\)"),
        (["train", "--max-steps", "0"], r"`--max-steps` must be >= 1"),
        (["train", "--lora-r", "0"], r"`--lora-r` must be an integer >= 1, got 0"),
        (["train", "--lora-alpha", "4"], r"--lora-alpha needs --lora-r"),
        (["train", "--lora-r", "2", "--lora-target-modules", "nope"], r"fits no module of this model"),
        (["train", "--ref-model", "MODEL"], r"`--ref-model` is given but the data carries"),
        (["train", "--lr", "1e-3"], r"unrecognized arguments: --lr"),
        (["train", "--resume"], r"`--resume` continues an earlier run of `o1-pruner train`"),
        (["evaluate", "--baseline-accuracy", "0.5"], r"`--baseline-accuracy` and `--baseline-length` go"),
        (
            ["evaluate", "--baseline-accuracy", "0", "--baseline-length", "9"],
            r"`--baseline-accuracy` must be > 0",
        ),
        (["evaluate", "--max-new-tokens", "0"], r"`--max-new-tokens` must be >= 1, got 0"),
    ],
)
def test_bad_input_is_refused_before_any_side_effect(  # noqa: PLR0917
    arch, argv, match, tiny_lm_dir, qwen_dir, problems_file, presampled, tmp_path
) -> None:
    model = _model(arch, tiny_lm_dir, qwen_dir)
    command, *rest = argv
    data = str(presampled) if command == "train" else str(problems_file)
    rest = [{"MISSING": str(tmp_path / "missing"), "MODEL": model}.get(item, item) for item in rest]
    full = ["o1-pruner", command, "--model", model, "--data", data, *rest, *QUIET]
    output = tmp_path / ("out.json" if command == "evaluate" else "out")
    full += ["--output", str(output)]
    paths = [tmp_path, problems_file.parent, presampled, Path(model)]
    check_cli_fails_cleanly(full, match, paths=paths, output=output)


def test_bad_data_and_a_raising_grader(tiny_lm_dir, tmp_path) -> None:
    data = tmp_path / "inputs" / "bad.jsonl"
    data.parent.mkdir()
    argv = ["o1-pruner", "presample", "--model", str(tiny_lm_dir), "--data", str(data), *SMALL, *QUIET]
    argv += ["--output", str(tmp_path / "out")]
    data.write_text(json.dumps({"prompt": "2 + 2 ="}) + "\n")
    check_cli_fails_cleanly(argv, r"bad.jsonl:1 .*answer", paths=[tmp_path], output=tmp_path / "out")
    data.write_text(json.dumps({"prompt": "2 + 2 =", "answer": "four"}) + "\n")
    error = check_cli_fails_cleanly(
        argv, r"the grader raised on problem 0 \(answer 'four'\), sample 0", status=2
    )
    assert "last_number_grader needs a numeric answer" in error


def test_foreign_output_is_never_touched(tiny_lm_dir, presampled, tmp_path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        argv = _train(str(tiny_lm_dir), presampled, mine, *extra)
        check_cli_fails_cleanly(argv, r"--output .*mine", paths=[tmp_path, presampled], output=mine)
