"""``paperpack r-tsvm statistics``: the files it writes equal compute_fisher / compute_gram and feed recipes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.cli import main
from paperpack.core.hf import load_model_and_tokenizer, tiny_causal_lm
from paperpack.core.testing.contracts import (
    assert_state_dicts_equal,
    check_cli_fails_cleanly,
)
from paperpack.r_tsvm import MergeConfig, compute_fisher, compute_gram, merge_checkpoints, merge_state_dicts

TEXTS = [
    "the river was large",
    "a small model",
    "merge the weights now",
    "fisher weights every parameter by its precision",
    "gram",
]


@pytest.fixture(scope="module")
def folders(tiny_lm, tmp_path_factory):
    """Two model folders with their tokenizers (``a``: the tiny model, ``b``: a perturbed copy) and data."""
    model, tokenizer = tiny_lm
    root = tmp_path_factory.mktemp("statistics")
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=g))
    for name, net in (("a", model), ("b", other)):
        net.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(TEXTS)))
    return {"a": root / "a", "b": root / "b", "data": data}


def statistics_args(folders, model, kind, output, *extra):
    args = [
        "r-tsvm",
        "statistics",
        "--model",
        str(folders[model]),
        "--data",
        str(folders["data"]),
        "--kind",
        kind,
    ]
    return [*args, "--output", str(output), "--device", "cpu", *extra]


def run_statistics(folders, model, kind, output, *extra):
    return main(statistics_args(folders, model, kind, output, *extra))


def python_batches(folder, texts, *, batch_size, max_length):
    """The batches the command should build: padded, truncated, padding labelled -100 (written out here)."""
    model, tokenizer = load_model_and_tokenizer(folder, device="cpu", dtype="float32")
    batches = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        batches.append(dict(batch))
    return model, batches


@pytest.mark.parametrize(
    "case",
    [
        ("fisher", ["--batch-size", "2"], compute_fisher),
        (
            "fisher",
            ["--batch-size", "3", "--true-fisher", "--seed", "3"],
            lambda m, b: compute_fisher(m, b, empirical=False, seed=3),
        ),
        ("gram", ["--batch-size", "2", "--max-examples", "4", "--max-length", "16"], compute_gram),
    ],
    ids=["empirical-fisher", "true-fisher", "gram"],
)
def test_statistics_command_writes_what_compute_functions_return(folders, tmp_path, capsys, case):
    kind, extra, compute = case
    output = tmp_path / "stats.safetensors"
    assert run_statistics(folders, "a", kind, output, *extra) == 0
    assert f"wrote {kind} statistics" in capsys.readouterr().out
    options = dict(zip(extra[::2], extra[1::2], strict=False))
    texts = TEXTS[: int(options.get("--max-examples", len(TEXTS)))]
    model, batches = python_batches(
        folders["a"],
        texts,
        batch_size=int(options["--batch-size"]),
        max_length=int(options.get("--max-length", 256)),
    )
    assert any((batch["attention_mask"] == 0).any() for batch in batches), "the test needs padding"
    assert_state_dicts_equal(load_state_dict(output), compute(model, batches), atol=1e-7, rtol=1e-5)
    with safe_open(output, "pt") as file:
        record = json.loads(file.metadata()["paperpack_r_tsvm_statistics"])
    assert record["kind"] == kind
    assert record["examples"] == len(texts)
    assert record["tokens"] == sum(int(batch["attention_mask"].sum()) for batch in batches)


@pytest.mark.parametrize(("method", "kind"), [("fisher", "fisher"), ("regmean", "gram")])
def test_statistics_files_load_into_a_recipe(folders, tmp_path, method, kind):
    paths = {name: tmp_path / f"{name}.{kind}.safetensors" for name in ("a", "b")}
    for name, path in paths.items():
        assert run_statistics(folders, name, kind, path, "--max-examples", "3") == 0
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "merge_method": method,
                "models": [
                    {"model": str(folders[name]), "statistics": path.name} for name, path in paths.items()
                ],
            }
        )
    )
    merge_checkpoints(MergeConfig.from_yaml(recipe), tmp_path / "merged", progress=False)
    expected = merge_state_dicts(
        method,
        None,
        [load_state_dict(folders[name]) for name in paths],
        statistics=[load_state_dict(path) for path in paths.values()],
    )
    assert_state_dicts_equal(load_state_dict(tmp_path / "merged"), expected, atol=1e-6, rtol=1e-5)


def test_fisher_of_tied_weights_is_written_under_both_names(folders, tmp_path):
    model, tokenizer = tiny_causal_lm(tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "tied")
    tokenizer.save_pretrained(tmp_path / "tied")
    output = tmp_path / "tied.safetensors"
    folders = {**folders, "tied": tmp_path / "tied"}
    assert run_statistics(folders, "tied", "fisher", output, "--max-examples", "2") == 0
    fisher = load_state_dict(output)
    torch.testing.assert_close(fisher["lm_head.weight"], fisher["model.embed_tokens.weight"], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-model", "is not a model folder"),
        ("missing-data", "does not exist"),
        ("empty-data", "holds no records"),
        ("no-text", "needs a string field 'text'"),
        ("not-utf8", r"data.jsonl:2 is not UTF-8 text \(byte 0xe9"),
        ("output-inside-model", "overlaps input"),
        ("output-is-data", "overlaps input"),
        ("output-not-safetensors", "`--output` must be a .safetensors file"),
        ("output-is-the-users", "already exists; pass --overwrite to replace it"),
        ("overwrite-the-users", "already exists and is not an earlier output of `r-tsvm statistics`"),
        ("true-fisher-gram", "`--true-fisher` applies to `--kind` fisher only"),
        ("zero-batch-size", "`--batch-size` must be an integer >= 1, got 0"),
        ("zero-max-examples", "`--max-examples` must be >= 1, got 0"),
        ("nan-seed", "`--seed` must be a non-negative integer"),
    ],
)
def test_statistics_command_reports_bad_inputs(folders, tmp_path, case, message):
    """Each bad input: exit 2, one line naming the flag as typed, the file system exactly as before."""
    folders = dict(folders)
    output = tmp_path / "stats.safetensors"
    kind, extra = "fisher", []
    if case == "missing-model":
        folders["a"] = tmp_path / "nowhere"
    elif case == "missing-data":
        folders["data"] = tmp_path / "nothing.jsonl"
    elif case == "empty-data":
        folders["data"] = tmp_path / "empty.jsonl"
        folders["data"].write_text("\n\n")
    elif case == "no-text":
        folders["data"] = tmp_path / "prompts.jsonl"
        folders["data"].write_text('{"text": "fine"}\n{"prompt": "no text here"}\n')
    elif case == "not-utf8":
        folders["data"] = tmp_path / "data.jsonl"
        folders["data"].write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    elif case == "output-inside-model":
        output = folders["a"] / "stats.safetensors"
    elif case == "output-is-data":
        folders["data"] = tmp_path / "data.safetensors"
        folders["data"].write_text('{"text": "fine"}\n')
        output = folders["data"]
    elif case == "output-not-safetensors":
        output = tmp_path / "stats"
    elif case in ("output-is-the-users", "overwrite-the-users"):
        output.write_bytes(b"the user's own file")
        extra = ["--overwrite"] if case == "overwrite-the-users" else []
    elif case == "true-fisher-gram":
        kind, extra = "gram", ["--true-fisher"]
    elif case == "zero-batch-size":
        extra = ["--batch-size", "0"]
    elif case == "zero-max-examples":
        extra = ["--max-examples", "0"]
    elif case == "nan-seed":
        extra = ["--seed", "nan"]
    check_cli_fails_cleanly(
        statistics_args(folders, "a", kind, output, *extra),
        message,
        paths=[tmp_path, folders["a"]],
        output=output,
    )


def test_statistics_command_replaces_its_own_earlier_output_with_overwrite(folders, tmp_path):
    output = tmp_path / "stats.safetensors"
    assert run_statistics(folders, "a", "gram", output, "--max-examples", "2") == 0
    check_cli_fails_cleanly(
        statistics_args(folders, "a", "gram", output, "--max-examples", "3"),
        "already exists; pass --overwrite",
        paths=[tmp_path],
        output=output,
    )
    assert run_statistics(folders, "a", "gram", output, "--max-examples", "3", "--overwrite") == 0
    with safe_open(output, "pt") as file:
        assert json.loads(file.metadata()["paperpack_r_tsvm_statistics"])["examples"] == 3


def test_the_model_is_a_flag_not_a_positional(folders, tmp_path):
    argv = ["r-tsvm", "statistics", str(folders["a"]), "--data", str(folders["data"]), "--kind", "gram"]
    check_cli_fails_cleanly([*argv, "--output", str(tmp_path / "s.safetensors")], "--model", paths=[tmp_path])


def test_statistics_command_refuses_an_unknown_kind(folders, tmp_path):
    output = tmp_path / "stats.safetensors"
    check_cli_fails_cleanly(
        statistics_args(folders, "a", "hessian", output),
        "`--kind` must be one of 'fisher', 'gram', got 'hessian'",
        paths=[tmp_path],
        output=output,
    )


def test_statistics_help_imports_no_torch():
    probe = (
        "import sys\n"
        "from paperpack.core.cli import main\n"
        "try:\n"
        "    main(['r-tsvm', 'statistics', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "--true-fisher" in result.stdout
    assert "heavy: []" in result.stdout
