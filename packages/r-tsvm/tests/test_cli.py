"""The ``paperpack merge`` and ``paperpack r-tsvm`` commands, run in-process through the core's CLI."""

from __future__ import annotations

import json

import torch
import yaml

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.cli import main
from paperpack.core.testing.contracts import assert_no_partial_output, assert_state_dicts_equal
from paperpack.r_tsvm import merge_state_dicts


def write_recipe(tmp_path, model_dirs, **extra):
    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(model_dirs["base"]),
        "models": [{"model": str(model_dirs[f"expert{i}"]), "parameters": {"weight": 0.5}} for i in range(2)],
        "parameters": {"lambda": 0.7},
        **extra,
    }
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_merge_command_runs_a_recipe(model_dirs, tmp_path, capsys):
    recipe = write_recipe(tmp_path, model_dirs)
    assert main(["merge", str(recipe), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
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


def test_merge_command_reports_bad_recipes(model_dirs, tmp_path, capsys):
    recipe = write_recipe(tmp_path, model_dirs, parameters={"densty": 0.2})
    assert main(["merge", str(recipe), "--output", str(tmp_path / "out")]) != 0
    assert (
        "unknown parameter 'densty' for merge method 'task_arithmetic' in `parameters`"
        in capsys.readouterr().err
    )
    assert_no_partial_output(tmp_path / "out")


def test_r_tsvm_command_takes_every_parameter_as_a_flag(model_dirs, tmp_path):
    args = ["r-tsvm", "merge", "--base", str(model_dirs["base"]), "--models"]
    args += [str(model_dirs[f"expert{i}"]) for i in range(3)]
    args += ["--output", str(tmp_path / "out"), "--kappa", "2.5", "--rank-mode", "energy", "--no-progress"]
    args += ["--exclude-keys", "embed_tokens", "lm_head", "--dtype", "bfloat16"]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["parameters"]["kappa"] == 2.5
    assert report["parameters"]["rank_mode"] == "energy"
    assert report["parameters"]["exclude_keys"] == ["embed_tokens", "lm_head"]
    assert "lm_head.weight" not in report["layers"]
    assert load_state_dict(tmp_path / "out")["lm_head.weight"].dtype == torch.bfloat16


def test_r_tsvm_methods_lists_every_method(capsys):
    assert main(["r-tsvm", "methods"]) == 0
    out = capsys.readouterr().out
    for name in ("ties", "tsv_m", "r_tsvm", "resm", "regmean"):
        assert f"\n{name} " in f"\n{out}"
    assert "kappa=3.0" in out
