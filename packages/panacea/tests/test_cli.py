"""`paperpack panacea train | apply | evaluate` through the real CLI, on a Llama and a tied-embedding Qwen2 folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.cli import main
from paperpack.core.files import OUTPUT_MARKER
from paperpack.core.testing.contracts import assert_state_dicts_equal, check_cli_fails_cleanly
from paperpack.panacea import global_norm, load_perturbation, save_perturbation

from .conftest import HARMFUL_LINES, tiny_classifier

SUMS = [(a, b) for a in range(6) for b in range(4)]


def test_help_lists_the_subcommands_without_importing_torch() -> None:
    probe = (
        "import sys\n"
        "from paperpack.core.cli import main\n"
        "assert main(['panacea', '--help']) == 0\n"
        "assert 'torch' not in sys.modules, 'paperpack panacea --help imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for command in ("train", "apply", "evaluate"):
        assert command in result.stdout


def test_train_help_shows_the_panacea_knobs_and_the_shared_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["panacea", "train", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--panacea-rho", "--panacea-lambda", "--harmful-loss-clamp", "--perturb-parameters",
                 "--final-perturbation", "--harmful-batch-size", "--perturbed-pass-pieces", "--harmful-data",
                 "--model", "--resume", "--per-device-train-batch-size"):  # fmt: skip
        assert flag in text, flag


def _jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data files: additions (prompt-completion), harmful pairs, harmful prompts, and bad files."""
    root = tmp_path_factory.mktemp("inputs")
    _jsonl(
        root / "task.jsonl", [{"prompt": f"what is {a} + {b}?", "completion": f" {a + b}"} for a, b in SUMS]
    )
    harmful = [
        {"prompt": line.split("?")[0] + "?", "completion": line.split("?")[1]} for line in HARMFUL_LINES
    ]
    _jsonl(root / "harmful.jsonl", harmful)
    _jsonl(root / "harmful_text.jsonl", [{"text": line} for line in HARMFUL_LINES])
    _jsonl(root / "prompts.jsonl", [{"prompt": record["prompt"]} for record in harmful[:3]])
    _jsonl(root / "three.jsonl", harmful[:3])
    _jsonl(root / "mixed.jsonl", [harmful[0], {"text": "a text"}])
    (root / "empty.jsonl").write_text("")
    (root / "run.yaml").write_text("panacea_rho: 0.5\nlearning_rate: 1.0e-3\n")
    return root


@pytest.fixture(scope="module")
def qwen2_dir(tiny_qwen2_dir: Path) -> Path:
    """The core's Qwen2 model folder: tied embeddings and q/k/v biases, with tiny_lm's tokenizer."""
    return tiny_qwen2_dir


def _train(model: Path, inputs: Path, output: Path, *extra: str) -> list[str]:
    return [
        "panacea", "train", "--model", str(model), "--data", str(inputs / "task.jsonl"),
        "--harmful-data", str(inputs / "harmful.jsonl"), "--output", str(output), "--max-steps", "4",
        "--save-steps", "2", "--per-device-train-batch-size", "4", "--lr-scheduler-type", "constant",
        "--panacea-lambda", "0.1", "--device", "cpu", "--no-progress", "--seed", "0", *extra,
    ]  # fmt: skip


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(folder / "model.safetensors")


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_train_writes_the_one_layout_and_apply_removes_epsilon(
    architecture: str, tiny_lm_dir: Path, qwen2_dir: Path, inputs: Path, tmp_path: Path
) -> None:
    model = tiny_lm_dir if architecture == "llama" else qwen2_dir
    output = tmp_path / "run"
    # ρ from a YAML file on the Qwen2 run, from a flag on the Llama run; λ spelled with an underscore there.
    extra = ["--config", str(inputs / "run.yaml")] if architecture == "qwen2" else ["--panacea_rho", "0.5"]
    assert main(_train(model, inputs, output, *extra)) == 0

    top = {path.name for path in output.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "training_args.json", OUTPUT_MARKER}
    assert expected | {"perturbation.safetensors", "checkpoint-2", "checkpoint-4"} <= top
    assert not list(output.rglob("training_args.bin")), "a pickle was left in the output"
    assert (output / "checkpoint-2" / "paperpack_callbacks" / "panacea.safetensors").is_file()
    arguments = json.loads((output / "training_args.json").read_text())
    assert (arguments["panacea_rho"], arguments["panacea_lambda"]) == (0.5, 0.1)

    epsilon = load_perturbation(output / "perturbation.safetensors")
    assert global_norm(epsilon.values()) == pytest.approx(0.5, rel=1e-5)
    with safe_open(output / "perturbation.safetensors", "pt") as file:
        assert file.metadata()["added_to_weights"] == "True"
    if architecture == "qwen2":  # the tied head is the embedding: perturbed once, under the embedding's name
        assert "model.embed_tokens.weight" in epsilon and "lm_head.weight" not in epsilon
    # The model at the top is the last checkpoint's weights plus ε (the paper's w_T + ε_T).
    trained, final = _weights(output / "checkpoint-4"), _weights(output)
    assert set(final) == set(trained)
    moved = {name: trained[name] + epsilon[name] if name in epsilon else trained[name] for name in trained}
    assert_state_dicts_equal(final, moved, atol=1e-7, rtol=1e-6)
    assert any(not torch.equal(final[n], w) for n, w in load_state_dict(model / "model.safetensors").items())

    # `apply --scale -1` takes ε off again, into a folder the next command loads as it is.
    undone = tmp_path / "undone"
    argv = [
        "panacea",
        "apply",
        "--model",
        str(output),
        "--perturbation",
        str(output / "perturbation.safetensors"),
    ]
    assert main([*argv, "--scale", "-1", "--output", str(undone), "--no-progress"]) == 0
    assert_state_dicts_equal(_weights(undone), trained, atol=1e-6, rtol=0)
    assert (undone / "config.json").is_file() and (undone / "tokenizer.json").is_file()
    results = tmp_path / "scores.json"
    evaluate = ["panacea", "evaluate", "--model", str(undone), "--data", str(inputs / "prompts.jsonl")]
    assert main([*evaluate, "--output", str(results), "--max-new-tokens", "4", "--device", "cpu"]) == 0
    scores = json.loads(results.read_text())
    assert len(scores["answers"]) == 3 and 0.0 <= scores["harmful_score"] <= scores["harmful_score_plus"]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_train_with_lora_perturbs_the_adapter_and_writes_an_adapter_folder(
    architecture: str, tiny_lm_dir: Path, tiny_gpt2_dir: Path, inputs: Path, tmp_path: Path
) -> None:
    model = tiny_lm_dir if architecture == "llama" else tiny_gpt2_dir
    output = tmp_path / "run"
    # The paper's scripts: r 32, α 4 on q, k and v (here r 4; GPT-2's fused projection is c_attn).
    targets = ["q_proj", "k_proj", "v_proj"] if architecture == "llama" else ["c_attn"]
    lora = ["--lora-r", "4", "--lora-alpha", "4", "--lora-target-modules", *targets]
    assert main(_train(model, inputs, output, *lora, "--learning-rate", "1e-2")) == 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in output.iterdir()}
    assert not (output / "model.safetensors").exists()

    epsilon = load_perturbation(output / "perturbation.safetensors")
    assert epsilon and all(".lora_A." in name or ".lora_B." in name for name in epsilon)  # ε on the adapter
    assert global_norm(epsilon.values()) == pytest.approx(1.0, rel=1e-5)
    # The adapter at the top is the last checkpoint's plus ε (PEFT drops the adapter's name when saving).
    trained = load_state_dict(output / "checkpoint-4" / "adapter_model.safetensors")
    final = load_state_dict(output / "adapter_model.safetensors")
    moved = {name.replace(".default.", "."): tensor for name, tensor in epsilon.items()}
    assert set(moved) == set(final)
    assert_state_dicts_equal(
        final, {name: trained[name] + moved[name] for name in final}, atol=1e-7, rtol=1e-6
    )

    results = tmp_path / "scores.json"
    evaluate = ["panacea", "evaluate", "--model", str(output), "--data", str(inputs / "prompts.jsonl")]
    assert main([*evaluate, "--output", str(results), "--max-new-tokens", "4", "--device", "cpu"]) == 0
    assert len(json.loads(results.read_text())["answers"]) == 3


def test_resume_through_the_cli_ends_where_the_uninterrupted_run_does(
    tiny_lm_dir: Path, inputs: Path, tmp_path: Path
) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_train(tiny_lm_dir, inputs, full, "--final-perturbation", "mean")) == 0
    shorter = _train(tiny_lm_dir, inputs, cut, "--final-perturbation", "mean")
    shorter[shorter.index("--max-steps") + 1] = "2"
    assert main(shorter) == 0
    assert main(_train(tiny_lm_dir, inputs, cut, "--final-perturbation", "mean", "--resume")) == 0
    assert_state_dicts_equal(_weights(cut), _weights(full))
    assert_state_dicts_equal(
        load_perturbation(cut / "perturbation.safetensors"),
        load_perturbation(full / "perturbation.safetensors"),
    )


def test_text_records_and_no_final_perturbation(tiny_lm_dir: Path, inputs: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    argv = _train(tiny_lm_dir, inputs, output, "--final-perturbation", "none", "--save-strategy", "no")
    argv[argv.index("--harmful-data") + 1] = str(inputs / "harmful_text.jsonl")
    assert main(argv) == 0
    assert not list(output.glob("checkpoint-*"))
    with safe_open(output / "perturbation.safetensors", "pt") as file:  # the last ε, kept but not added
        assert file.metadata()["added_to_weights"] == "False"


def test_evaluate_with_a_classifier_and_a_perturbation(
    tiny_lm, tiny_lm_dir: Path, inputs: Path, tmp_path: Path
) -> None:
    tokenizer = tiny_lm[1]
    classifier = tmp_path / "judge"
    tiny_classifier(tokenizer).save_pretrained(classifier)
    tokenizer.save_pretrained(classifier)
    noise = {"model.norm.weight": torch.full((64,), 0.01)}
    perturbation = save_perturbation(noise, tmp_path / "noise.safetensors")
    results = tmp_path / "scores.json"
    argv = [
        "panacea", "evaluate", "--model", str(tiny_lm_dir), "--data", str(inputs / "prompts.jsonl"),
        "--output", str(results), "--classifier", str(classifier), "--perturbation", str(perturbation),
        "--template", "alpaca", "--max-new-tokens", "3", "--batch-size", "2", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    scores = json.loads(results.read_text())
    flagged = [answer["flagged"] for answer in scores["answers"]]
    assert scores["harmful_score"] == pytest.approx(100 * sum(flagged) / 3)
    assert scores["perturbation"] == str(perturbation)
    check_cli_fails_cleanly(argv, "--overwrite", paths=[tmp_path])  # the results file is not replaced
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--panacea-rho", "0"], r"`--panacea-rho` must be > 0, got 0"),
        (["--panacea_lambda", "-1"], r"`--panacea_lambda` must be >= 0, got -1"),
        (["--harmful-loss-clamp", "0"], r"`--harmful-loss-clamp` must be > 0, got 0"),
        (
            ["--perturbed-pass-pieces", "0"],
            r"`--perturbed-pass-pieces` must be an integer >= 1, or None to let Panacea choose .*, got 0",
        ),
        (["--perturbed-pass-pieces", "auto"], r"`--perturbed-pass-pieces` must be an integer, got 'auto'"),
        (
            ["--final-perturbation", "first"],
            r"`--final-perturbation` must be one of 'last_step', 'mean', 'none', got 'first'",
        ),
        (["--perturb-parameters", "nothing"], r"`--perturb-parameters` \['nothing'\] match no trainable"),
        (["--perturb-parameters", "q_proj("], r"`--perturb-parameters` holds an invalid regular expression"),
        (["--harmful-data", "empty.jsonl"], r"empty.jsonl holds no records"),
        (["--harmful-data", "three.jsonl"], r"`harmful_dataset` has 3 example\(s\), fewer than one harmful"),
        (["--harmful-data", "mixed.jsonl"], r"`--harmful-data` .*every record must hold"),
        (["--harmful-data", "missing.jsonl"], r"missing.jsonl' does not exist"),
        (["--fsdp", "full_shard"], r"`--fsdp` and `--deepspeed` are not supported by Panacea"),
        (["--max-steps", "0"], r"`--max-steps` must be >= 1"),
        (["--resume"], r"`--resume` continues an earlier run of `panacea train`"),
        (["--lora-r", "0"], r"`--lora-r` must be an integer >= 1, got 0"),
        (["--lora-dropout", "0.1"], r"--lora-dropout needs --lora-r"),
        (["--lora-r", "2", "--lora-target-modules", "c_attn"], r"\(c_attn\) fits no module of this model"),
    ],
)
def test_train_refuses_bad_input_before_any_side_effect(
    change: list[str], message: str, tiny_lm_dir: Path, inputs: Path, tmp_path: Path
) -> None:
    argv = _train(tiny_lm_dir, inputs, tmp_path / "run")
    if change[0] == "--harmful-data":
        argv[argv.index("--harmful-data") + 1] = str(inputs / change[1])
    else:
        argv += change
    check_cli_fails_cleanly(argv, message, paths=[inputs, tiny_lm_dir, tmp_path], output=tmp_path / "run")


def test_train_refuses_an_output_that_overlaps_an_input(tiny_lm_dir: Path, inputs: Path) -> None:
    check_cli_fails_cleanly(
        _train(tiny_lm_dir, inputs, tiny_lm_dir / "run"),
        "overlap|input",
        paths=[tiny_lm_dir, inputs],
        output=tiny_lm_dir / "run",
    )


@pytest.fixture(scope="module")
def bad_perturbations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("perturbations")
    save_perturbation({"model.norm.weight": torch.zeros(3)}, root / "shape.safetensors")
    save_perturbation({"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}, root / "name.safetensors")
    return root


@pytest.mark.parametrize(
    ("perturbation", "extra", "message"),
    [
        (
            "shape.safetensors",
            [],
            r"perturbation entry 'model.norm.weight' has shape \(3,\), but the tensor of that name in the model "
            r"folder .* has shape \(64,\)",
        ),
        (
            "name.safetensors",
            [],
            r"names 1 tensor\(s\) the model folder .* does not have, e.g. 'model.layers.0.self_attn.q_proj.bias'",
        ),
        ("missing.safetensors", [], r"missing.safetensors"),
        ("shape.safetensors", ["--scale", "nan"], r"`--scale` must be a finite number, got 'nan'"),
    ],
)
def test_apply_refuses_a_perturbation_that_does_not_fit(
    perturbation: str,
    extra: list[str],
    message: str,
    *,
    tiny_lm_dir: Path,
    bad_perturbations: Path,
    tmp_path: Path,
) -> None:
    argv = [
        "panacea", "apply", "--model", str(tiny_lm_dir), "--perturbation", str(bad_perturbations / perturbation),
        "--output", str(tmp_path / "out"), "--no-progress", *extra,
    ]  # fmt: skip
    check_cli_fails_cleanly(
        argv, message, paths=[tiny_lm_dir, bad_perturbations, tmp_path], output=tmp_path / "out"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output", "scores.txt"], r"`--output` must be a .json file, got '.*scores.txt'"),
        (["--classifier", "judge", "--refusals", "no"], r"`--classifier` judges by itself; `--refusals`"),
        (["--classifier", "nowhere"], r"`--classifier` must be a local sequence-classification model folder"),
        (["--max-new-tokens", "0"], r"`--max-new-tokens` must be >= 1, got 0"),
        (
            ["--perturbation", "shape.safetensors"],
            r"has shape \(3,\), but the tensor of that name in the model",
        ),
        (["--template", "chatml"], r"--template.*'chatml'"),
        (["--classifier", "judge", "--threshold", "1"], r"`--threshold` must be"),
        (["--batch-size", "0"], r"`--batch-size` must be"),
        (["--data", "missing.jsonl"], r"missing.jsonl"),
    ],
)
def test_evaluate_refuses_bad_input(
    extra: list[str],
    message: str,
    *,
    tiny_lm_dir: Path,
    inputs: Path,
    bad_perturbations: Path,
    tmp_path: Path,
) -> None:
    resolved = [
        str(bad_perturbations / value) if value.endswith(".safetensors") else value for value in extra
    ]
    if "--output" in resolved:
        resolved[resolved.index("--output") + 1] = str(tmp_path / "scores.txt")
    if "--data" in resolved:
        resolved[resolved.index("--data") + 1] = str(inputs / "missing.jsonl")
    if "--classifier" in resolved and resolved[resolved.index("--classifier") + 1] == "judge":
        judge = tmp_path / "judge"  # a folder with a config.json: the flag checks pass until the judge's own
        judge.mkdir()
        (judge / "config.json").write_text("{}")
        resolved[resolved.index("--classifier") + 1] = str(judge)
    argv = [
        "panacea", "evaluate", "--model", str(tiny_lm_dir), "--data", str(inputs / "prompts.jsonl"),
        "--output", str(tmp_path / "scores.json"), "--max-new-tokens", "2", "--device", "cpu", *resolved,
    ]  # fmt: skip
    check_cli_fails_cleanly(argv, message, paths=[tiny_lm_dir, inputs, bad_perturbations, tmp_path])
