"""``paperpack merge-router`` through the real CLI, as a user types it: compile, conflicts and generate on a
Llama and a GPT-2 family, and every bad input failing with a clear message and leaving the disk untouched."""

from __future__ import annotations

import json
import shutil

import pytest

from paperpack.core.cli import main
from paperpack.core.testing.contracts import check_cli_fails_cleanly
from paperpack.merge_router.compile import CONFIG_NAME

TASKS = ("sort", "reverse", "count")


def write_recipe(folder, dirs, prompts, **extra):
    """A recipe in ``folder`` naming ``dirs`` by relative paths; the count prompts come from a .jsonl file."""
    for name in ("base", *TASKS):
        if not (folder / name).exists():
            shutil.copytree(dirs[name], folder / name)
    (folder / "count.jsonl").write_text(
        "".join(json.dumps({"text": text}) + "\n" for text in prompts["count"])
    )
    lines = [
        "base_model: base",
        "experts: {" + ", ".join(f"{task}: {task}" for task in TASKS) + "}",
        "prompts:",
        f"  sort: {json.dumps(prompts['sort'])}",
        f"  reverse: {json.dumps(prompts['reverse'])}",
        "  count: count.jsonl",
        *extra.get("lines", ["mediator: {router_steps: 30, threshold_mode: topk, threshold: 0.5}"]),
    ]
    recipe = folder / "recipe.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    return recipe


@pytest.fixture(scope="module")
def recipe(llama_dirs, prompts, tmp_path_factory):
    return write_recipe(tmp_path_factory.mktemp("recipe"), llama_dirs, prompts)


@pytest.mark.parametrize("family", ["llama_dirs", "gpt2_dirs"])
def test_compile_then_generate(family, prompts, tmp_path, capsys, request):
    recipe = write_recipe(tmp_path, request.getfixturevalue(family), prompts)
    output = tmp_path / "mediator"
    assert (
        main(["merge-router", "compile", str(recipe), "--output", str(output), "--sparse-density", "0.2"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "units routed" in printed and "router held-out accuracy" in printed
    description = json.loads((output / CONFIG_NAME).read_text())
    assert description["config"]["sparse_density"] == 0.2  # the flag over the recipe
    assert description["config"]["threshold_mode"] == "topk"  # the recipe's
    argv = [
        "merge-router",
        "generate",
        "--model",
        str(output),
        "--prompt",
        prompts["sort"][0],
        "how many 2 in 2",
    ]
    assert main([*argv, "--max-new-tokens", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("confidence") == 2 and printed.count("->") == 2
    assert main([*argv, "--task", "count", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.count("[count 1.00; confidence 1.000]") == 2
    # --overwrite replaces an earlier compiled folder
    assert main(["merge-router", "compile", str(recipe), "--output", str(output), "--overwrite"]) == 0


def test_conflicts_prints_a_table_and_writes_a_plot(llama_dirs, tmp_path, capsys):
    experts = [f"{task}={llama_dirs[task]}" for task in TASKS]
    plot = tmp_path / "conflicts.png"
    argv = ["merge-router", "conflicts", "--base-model", str(llama_dirs["base"]), "--experts", *experts]
    assert main([*argv, "--output", str(plot), "--conflict", "cosine", "--no-progress"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(row.startswith("model.layers.1 ") for row in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_cli_fails_cleanly([*argv, "--output", str(plot)], "exists", output=plot)
    check_cli_fails_cleanly([*argv, "--output", str(tmp_path / "c.jpg")], r"`--output` must be a \.png file")
    check_cli_fails_cleanly(
        [*argv[:4], "--experts", str(llama_dirs["sort"])], "at least two tasks", paths=[tmp_path]
    )


def test_bad_input_fails_cleanly(recipe, llama_dirs, gpt2_dirs, tmp_path):
    folder = recipe.parent
    output = tmp_path / "out"
    compile_ = ["merge-router", "compile", str(recipe), "--output", str(output)]
    watch = {"paths": [folder], "output": output}
    check_cli_fails_cleanly(
        [*compile_, "--sparse-density", "0"], r"`--sparse-density` must be in \(0, 1\]", **watch
    )
    check_cli_fails_cleanly([*compile_, "--sparse-density", "1.5"], r"must be in \(0, 1\], got 1.5", **watch)
    check_cli_fails_cleanly([*compile_, "--dense-method", "nope"], r"`--dense-method`.*'nope'", **watch)
    check_cli_fails_cleanly(
        [*compile_, "--threshold-mode", "median"], "invalid choice|must be one of", **watch
    )
    check_cli_fails_cleanly(
        ["merge-router", "compile", str(recipe), "--output", str(folder / "base")], "input|overlap", **watch
    )
    check_cli_fails_cleanly(
        ["merge-router", "compile", str(recipe), "--output", str(folder)],
        "not empty|exists|input|overlap",
        **watch,
    )

    def bad_recipe(name, *lines, experts=None):
        other = tmp_path / name
        other.mkdir()
        (other / "recipe.yaml").write_text("\n".join(lines) + "\n")
        return ["merge-router", "compile", str(other / "recipe.yaml"), "--output", str(other / "out")], other

    prompts_lines = [
        "prompts:",
        "  sort: [a b, c d]",
        "  reverse: [e f, g h]",
    ]
    argv, where = bad_recipe(
        "missing",
        f"base_model: {llama_dirs['base']}",
        "experts: {" + f"sort: {llama_dirs['sort']}, "
        f"reverse: {llama_dirs['reverse']}, count: {llama_dirs['count']}" + "}",
        *prompts_lines,
    )
    check_cli_fails_cleanly(argv, "task 'count' has no prompts", paths=[where, llama_dirs["base"]])
    argv, where = bad_recipe(
        "arch",
        f"base_model: {llama_dirs['base']}",
        "experts: {" + f"sort: {llama_dirs['sort']}, reverse: {gpt2_dirs['reverse']}" + "}",
        *prompts_lines,
    )
    check_cli_fails_cleanly(
        argv, "mismatched architectures", paths=[where, llama_dirs["base"], gpt2_dirs["reverse"]]
    )
    argv, where = bad_recipe("key", "base_model: base", "experts: {}", "prompts: {}", "models: []")
    check_cli_fails_cleanly(argv, "unknown key 'models'; allowed: base_model, experts, prompts, mediator")
    argv, where = bad_recipe(
        "field", f"base_model: {llama_dirs['base']}", "experts: {}", "prompts: {}", "mediator: {density: 0.1}"
    )
    check_cli_fails_cleanly(argv, "unknown MediatorConfig field 'density'", paths=[where])
    argv, where = bad_recipe(
        "missing_dir",
        f"base_model: {llama_dirs['base']}",
        "experts: {sort: nowhere, reverse: nowhere2}",
        *prompts_lines,
    )
    check_cli_fails_cleanly(argv, "does not exist", paths=[where])


def test_generate_bad_input(llama_dirs, tmp_path):
    check_cli_fails_cleanly(
        ["merge-router", "generate", "--model", str(llama_dirs["base"]), "--prompt", "hi"],
        "is not a Mediator folder",
        paths=[llama_dirs["base"]],
    )
    check_cli_fails_cleanly(
        ["merge-router", "generate", "--model", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "0"],
        "`--max-new-tokens` must be",
    )
