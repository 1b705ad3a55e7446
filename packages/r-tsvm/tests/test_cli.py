"""The ``paperpack merge`` and ``paperpack r-tsvm`` commands, run in-process through the core's real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.cli import main
from paperpack.core.testing.contracts import (
    assert_no_partial_output,
    assert_state_dicts_equal,
    check_cli_fails_cleanly,
)
from paperpack.r_tsvm import merge_state_dicts


def write_recipe(tmp_path, model_dirs, text=None, **extra):
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(model_dirs["base"]),
        "models": [{"model": str(model_dirs[f"expert{i}"]), "parameters": {"weight": 0.5}} for i in range(2)],
        "parameters": {"lambda": 0.7},
        **extra,
    }
    path = tmp_path / "merge.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(recipe))
    return path


def r_tsvm_args(model_dirs, output, *extra):
    args = ["r-tsvm", "merge", "--base-model", str(model_dirs["base"]), "--models"]
    args += [str(model_dirs[f"expert{i}"]) for i in range(3)]
    return [*args, "--output", str(output), "--no-progress", "--device", "cpu", *extra]


def test_merge_command_runs_a_recipe(model_dirs, tmp_path, capsys):
    recipe = write_recipe(tmp_path, model_dirs)
    assert (
        main(["merge", str(recipe), "--output", str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
        == 0
    )
    assert "merged 2 model(s) with task_arithmetic" in capsys.readouterr().out
    expected = merge_state_dicts(
        "task_arithmetic",
        load_state_dict(model_dirs["base"]),
        [load_state_dict(model_dirs[f"expert{i}"]) for i in range(2)],
        weights=[0.5, 0.5],
        scaling=0.7,
    )
    assert_state_dicts_equal(load_state_dict(tmp_path / "out"), expected)


def test_merge_command_dry_run_writes_nothing(model_dirs, tmp_path, capsys):
    recipe = write_recipe(tmp_path, model_dirs)
    assert main(["merge", str(recipe), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["parameters"] == {"scaling": 0.7, "normalize": False}
    assert_no_partial_output(tmp_path / "out")


def test_yaml_numbers_are_numbers(model_dirs, tmp_path, capsys):
    """PyYAML alone reads 5e-1 as the string '5e-1'; the recipe reader gives the number."""
    text = yaml.safe_dump({"merge_method": "ties", "base_model": str(model_dirs["base"])})
    text += f"models: [{model_dirs['expert0']}, {model_dirs['expert1']}]\nparameters: {{density: 5e-1, lambda: 1e0}}\n"
    recipe = write_recipe(tmp_path, model_dirs, text=text)
    assert main(["merge", str(recipe), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["parameters"]["density"] == 0.5


def test_overwrite_replaces_an_earlier_merge_only(model_dirs, tmp_path):
    recipe = write_recipe(tmp_path, model_dirs)
    argv = ["merge", str(recipe), "--output", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    check_cli_fails_cleanly(argv, "already exists .* pass --overwrite", output=tmp_path / "out")
    assert main([*argv, "--overwrite"]) == 0
    # An output of `paperpack merge` is not `paperpack r-tsvm merge`'s to replace.
    check_cli_fails_cleanly(
        r_tsvm_args(model_dirs, tmp_path / "out", "--overwrite"),
        "holds an output of `merge`, not of `r-tsvm merge`",
        output=tmp_path / "out",
    )


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("users-folder", "is a folder that is not empty and that paperpack did not write"),
        ("users-folder-overwrite", "is a folder that is not empty and that paperpack did not write"),
        ("output-is-input", "overlaps input"),
        (
            "unknown-parameter",
            "unknown parameter 'densty' for merge method 'task_arithmetic' in `parameters`",
        ),
        ("huge-scaling", r"the merge of .* has non-finite values"),
        ("nan-weight", "`weight` in the parameters of model .*expert0.* must be a finite number"),
        ("duplicate-key", "duplicate key"),
        ("bad-yaml", r"merge.yaml:2:1: not valid YAML"),
        ("missing-recipe", "does not exist"),
        ("abbreviated-flag", "--overwr"),
    ],
)
def test_merge_command_refuses_bad_input_and_leaves_the_file_system_as_it_was(
    model_dirs, tmp_path, case, match
):
    output = tmp_path / "out"
    extra = []
    recipe = write_recipe(tmp_path, model_dirs)
    if case.startswith("users-folder"):
        output.mkdir()
        (output / "fisher_stats.safetensors").write_bytes(b"the user's")
        (output / "adapter_config.json").write_text("{}")
        extra = ["--overwrite"] if case.endswith("overwrite") else []
    elif case == "output-is-input":
        output = model_dirs["expert1"] / "merged"
    elif case == "unknown-parameter":
        recipe = write_recipe(tmp_path, model_dirs, parameters={"densty": 0.2})
    elif case == "huge-scaling":
        recipe = write_recipe(
            tmp_path,
            model_dirs,
            text=write_recipe(tmp_path, model_dirs).read_text().replace("lambda: 0.7", "lambda: 1.0e+300"),
        )
    elif case == "nan-weight":
        recipe = write_recipe(
            tmp_path, model_dirs, text=recipe.read_text().replace("weight: 0.5", "weight: .nan", 1)
        )
    elif case == "duplicate-key":
        recipe = write_recipe(tmp_path, model_dirs, text=recipe.read_text() + "merge_method: ties\n")
    elif case == "bad-yaml":
        recipe = write_recipe(tmp_path, model_dirs, text="merge_method: [ties\n")
    elif case == "missing-recipe":
        recipe = tmp_path / "nothing.yaml"
    elif case == "abbreviated-flag":
        extra = ["--overwr"]
    argv = ["merge", str(recipe), "--output", str(output), "--no-progress", "--device", "cpu", *extra]
    check_cli_fails_cleanly(argv, match, paths=[tmp_path, model_dirs["expert1"]], output=output)


def test_r_tsvm_command_takes_every_parameter_as_a_flag(model_dirs, tmp_path):
    extra = ["--kappa", "2.5", "--rank-mode", "energy", "--exclude-keys", "embed_tokens", "lm_head"]
    assert (
        main(r_tsvm_args(model_dirs, tmp_path / "out", *extra, "--dtype", "bf16", "--eps_rel", "1e-2")) == 0
    )
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["parameters"]["kappa"] == 2.5
    assert report["parameters"]["rank_mode"] == "energy"
    assert report["parameters"]["eps_rel"] == 0.01
    assert report["parameters"]["exclude_keys"] == ["embed_tokens", "lm_head"]
    assert "lm_head.weight" not in report["layers"]
    assert load_state_dict(tmp_path / "out")["lm_head.weight"].dtype == torch.bfloat16


def test_r_tsvm_command_reads_a_config_file(model_dirs, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("kappa: 5e-1\nrank_mode: fixed\nmax_shard_size: 300KB\n")
    assert main(r_tsvm_args(model_dirs, tmp_path / "out", "--config", str(config), "--kappa", "2")) == 0
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["parameters"]["kappa"] == 2.0  # typed on the command line: wins over the file
    assert report["parameters"]["rank_mode"] == "fixed"
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--rank-mode", "adaptive"], "`--rank-mode` must be one of 'fixed', 'sparsity', 'energy'"),
        (["--kappa", "nan"], "`--kappa` must be a finite number"),
        (["--kappa", "-1"], "`--kappa` must be > 0"),
        (["--k_min", "0"], "`--k_min` must be >= 1, got 0"),
        (["--weights", "1", "2"], r"`--weights` must give one number per model of `--models` \(3\), got 2"),
        (["--alpha", "1e39"], "has non-finite values"),
        (["--dtype", "float64"], "`--dtype` must be auto .*float32, bfloat16 or float16"),
        (["--vocab-mismatch", "pad"], "`--vocab-mismatch` must be one of 'error', 'base', 'truncate'"),
        (["--exclude-keys", "("], "`--exclude-keys` holds an invalid regular expression"),
        (["--chat-template", "vicuna"], "`--chat-template` must be 'auto', 'chatml' or a Jinja template"),
        (["--lr", "1"], "unrecognized arguments: --lr"),
    ],
)
def test_r_tsvm_command_refuses_bad_flags_naming_them_as_typed(model_dirs, tmp_path, extra, match):
    output = tmp_path / "out"
    check_cli_fails_cleanly(r_tsvm_args(model_dirs, output, *extra), match, paths=[tmp_path], output=output)


def test_a_bare_command_prints_its_help_and_exits_2(capsys):
    assert main(["r-tsvm"]) == 2
    printed = capsys.readouterr()
    assert "statistics" in printed.out + printed.err


def test_r_tsvm_methods_lists_every_method(capsys):
    assert main(["r-tsvm", "methods"]) == 0
    out = capsys.readouterr().out
    for name in (
        "ties",
        "tsv_m",
        "r_tsvm",
        "resm",
        "regmean",
        "model_stock",
        "sce",
        "nuslerp",
        "passthrough",
    ):
        assert f"\n{name} " in f"\n{out}"
    assert "kappa=3.0" in out
    assert "per model: density" in out


def test_merge_help_imports_no_torch():
    probe = (
        "import sys\n"
        "from paperpack.core.cli import main\n"
        "for argv in (['merge', '--help'], ['r-tsvm', 'merge', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "--tokenizer-source" in result.stdout
    assert "heavy: []" in result.stdout
