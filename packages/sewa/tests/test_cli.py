"""`paperpack sewa average` on saved tiny_causal_lm() folders: baselines, SeWA, and clean failures."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors import safe_open
from transformers import Trainer

from paperpack.core.checkpoints import load_state_dict, save_state_dict
from paperpack.core.cli import main
from paperpack.core.data import CausalLMCollator
from paperpack.core.hf import ArgumentsAsJson, default_corpus, save_trained_model, training_args
from paperpack.core.testing.contracts import assert_state_dicts_equal, check_cli_fails_cleanly
from paperpack.sewa import average_snapshots, select_snapshots
from paperpack.sewa.checkpoints import find_checkpoints

BAD = 2


@pytest.fixture(scope="module")
def run_dir(tiny_lm, tmp_path_factory) -> Path:
    """A Trainer-like output_dir with checkpoint-10 .. checkpoint-50; checkpoint-30 is badly perturbed."""
    model, tokenizer = tiny_lm
    root = tmp_path_factory.mktemp("run")
    generator = torch.Generator().manual_seed(0)
    for i in range(5):
        copy_ = copy.deepcopy(model)
        with torch.no_grad():
            for param in copy_.parameters():
                scale = 0.3 if i == BAD else 0.002 * (i + 1)
                param.add_(scale * torch.randn(param.shape, generator=generator))
        folder = root / f"checkpoint-{10 * (i + 1)}"
        copy_.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    (root / "not-a-checkpoint").mkdir()
    return root


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(json.dumps({"text": line}) for line in default_corpus(24, seed=5)) + "\n")
    return path


def _folders(run_dir: Path) -> list[Path]:
    return [run_dir / f"checkpoint-{10 * (i + 1)}" for i in range(5)]


def test_find_checkpoints_orders_by_step(run_dir: Path) -> None:
    assert find_checkpoints([run_dir]) == _folders(run_dir)
    assert find_checkpoints([run_dir], last_n=2) == _folders(run_dir)[-2:]
    single = _folders(run_dir)[0]
    assert find_checkpoints([single]) == [single]


@pytest.mark.parametrize(
    ("strategy", "extra"), [("uniform", []), ("lawa", ["--k", "2"]), ("ema", ["--k", "3"])]
)
def test_baselines_match_average_snapshots(
    run_dir: Path, tmp_path: Path, strategy: str, extra: list[str], capsys
) -> None:
    output = tmp_path / "avg"
    assert (
        main(
            [
                "sewa",
                "average",
                "--checkpoints",
                str(run_dir),
                "--strategy",
                strategy,
                "--output",
                str(output),
                *extra,
            ]
        )
        == 0
    )
    assert f"{strategy} average of 5 checkpoints" in capsys.readouterr().out
    states = [load_state_dict(folder) for folder in _folders(run_dir)]
    k = int(extra[1]) if extra else None
    expected = average_snapshots(states, strategy, k=k)
    tolerance = 1e-6 if strategy == "ema" else 0.0
    assert_state_dicts_equal(load_state_dict(output), expected, atol=tolerance, rtol=tolerance)
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in output.iterdir()}


@pytest.mark.slow
def test_sewa_excludes_the_bad_checkpoint(run_dir: Path, data_file: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "sewa"
    argv = [
        "sewa",
        "average",
        "--checkpoints",
        str(run_dir),
        "--strategy",
        "sewa",
        "--k",
        "2",
        "--data",
        str(data_file),
        "--output",
        str(output),
        "--iterations",
        "25",
        "--mc-samples",
        "2",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean of 2 of 5 checkpoints selected by SeWA" in printed
    with safe_open(output / "model.safetensors", framework="pt") as file:
        record = json.loads(file.metadata()["paperpack_sewa"])
    selected = record["selected"]
    assert len(selected) == 2 and BAD not in selected
    states = [load_state_dict(folder) for folder in _folders(run_dir)]
    expected = {key: torch.stack([states[i][key] for i in selected]).mean(0) for key in states[0]}
    assert_state_dicts_equal(load_state_dict(output), expected)


def test_the_search_runs_in_float32_unless_asked(
    run_dir: Path, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paperpack.core.hf import training
    from paperpack.sewa import checkpoints

    # Emulate a bf16-capable CUDA machine, where "auto" means bf16, on this CPU.
    resolve = training.resolve_dtype
    monkeypatch.setattr(
        training,
        "resolve_dtype",
        lambda dtype, device=None: torch.bfloat16 if dtype == "auto" else resolve(dtype),
    )
    seen: list[torch.dtype] = []

    def spy(snapshots, loss_fn, config, **kwargs):
        seen.append(snapshots[0]["lm_head.weight"].dtype)
        return select_snapshots(snapshots, loss_fn, config, **kwargs)

    monkeypatch.setattr(checkpoints, "select_snapshots", spy)
    argv = ["sewa", "average", "--checkpoints", str(run_dir), "--strategy", "sewa", "--k", "2"]
    argv += ["--data", str(data_file), "--iterations", "2", "--mc-samples", "1", "--batch-size", "2"]
    assert main([*argv, "--output", str(tmp_path / "default")]) == 0
    assert main([*argv, "--output", str(tmp_path / "auto"), "--dtype", "auto"]) == 0
    assert seen == [torch.float32, torch.bfloat16]
    with safe_open(tmp_path / "default" / "model.safetensors", framework="pt") as file:
        assert json.loads(file.metadata()["paperpack_sewa"])["search_dtype"] == "float32"


@pytest.fixture(scope="module")
def training_output(tiny_lm, tmp_path_factory) -> Path:
    """A training output in the layout of every paperpack training command: checkpoint-2, -4 and -5 (the
    Trainer saves at its last step) beside the final model at the top."""
    model, tokenizer = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    output = tmp_path_factory.mktemp("trained") / "run"
    encoded = tokenizer(default_corpus(32, seed=2), truncation=True, max_length=16)
    trainer = Trainer(
        model=model,
        args=training_args(
            output,
            max_steps=5,
            save_strategy="steps",
            save_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_dict({"input_ids": encoded["input_ids"]}),
        data_collator=CausalLMCollator(tokenizer),
        callbacks=[ArgumentsAsJson()],
    )
    trainer.train()
    save_trained_model(trainer, output, tokenizer=tokenizer)
    return output


def test_a_training_output_stands_for_its_checkpoints_and_final_model(
    training_output: Path, tmp_path: Path
) -> None:
    steps = [training_output / f"checkpoint-{step}" for step in (2, 4, 5)]
    # The final model is the last checkpoint's (saved at the last step): not counted twice.
    assert find_checkpoints([training_output]) == steps
    output = tmp_path / "uniform"
    argv = ["sewa", "average", "--checkpoints", str(training_output), "--strategy", "uniform"]
    assert main([*argv, "--output", str(output), "--no-progress"]) == 0
    states = [load_state_dict(path) for path in steps]
    assert_state_dicts_equal(load_state_dict(output), average_snapshots(states, "uniform"))
    # A run whose last steps were not saved as a checkpoint: its final model comes last.
    unsaved = tmp_path / "unsaved"
    shutil.copytree(training_output, unsaved, ignore=shutil.ignore_patterns("checkpoint-5"))
    assert find_checkpoints([unsaved]) == [unsaved / "checkpoint-2", unsaved / "checkpoint-4", unsaved]
    assert find_checkpoints([unsaved], last_n=1) == [unsaved]


def test_the_output_policy(run_dir: Path, tmp_path: Path) -> None:
    argv = ["sewa", "average", "--checkpoints", str(run_dir), "--strategy", "last", "--no-progress"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fisher_stats.safetensors").write_bytes(b"the user's file")
    for extra in ([], ["--overwrite"]):
        check_cli_fails_cleanly(
            [*argv, "--output", str(mine), *extra], r"--output", paths=[tmp_path, run_dir]
        )
    output = tmp_path / "averaged"
    assert main([*argv, "--output", str(output)]) == 0
    check_cli_fails_cleanly(
        [*argv, "--output", str(output)], r"--output.*--overwrite", paths=[tmp_path, run_dir]
    )
    before = load_state_dict(output)
    assert main([*argv[:-2], "uniform", "--no-progress", "--output", str(output), "--overwrite"]) == 0
    assert not torch.equal(load_state_dict(output)["lm_head.weight"], before["lm_head.weight"])
    (output / "notes.txt").write_text("the user's notes")  # an earlier output holding a file of the user's
    check_cli_fails_cleanly(
        [*argv, "--output", str(output), "--overwrite"], r"notes\.txt", paths=[tmp_path, run_dir]
    )
    check_cli_fails_cleanly(
        [*argv, "--output", str(_folders(run_dir)[0] / "avg")], r"overlap|inside", paths=[tmp_path, run_dir]
    )


BAD_INPUT = [
    (["--strategy", "sewa", "--k", "2"], r"--strategy sewa needs `--data`"),
    (["--strategy", "uniform", "--data", "DATA"], r"`--data` is used by --strategy sewa only"),
    (["--strategy", "lawa", "--k", "2", "--iterations", "5"], r"`--iterations` is used by --strategy sewa"),
    (["--strategy", "lawa"], r"strategy 'lawa' needs `--k`"),
    (["--strategy", "lawa", "--k", "9"], r"`--k` must be <= 5, got 9"),
    (["--strategy", "lawa", "--k", "1.5"], r"`--k` must be an integer, got '1.5'"),
    (["--strategy", "ema", "--decay", "1.0"], r"`--decay` must be in \[0, 1\), got 1.0"),
    (["--strategy", "ema", "--decay", "nan"], r"`--decay` must be a finite number, got 'nan'"),
    (["--strategy", "swa"], r"--strategy.*must be one of"),
    (
        ["--strategy", "sewa", "--k", "2", "--data", "DATA", "--iterations", "0"],
        r"`--iterations` must be >= 1",
    ),
    (
        ["--strategy", "sewa", "--k", "2", "--data", "DATA", "--mask-lr", "inf"],
        r"`--mask-lr` must be a finite",
    ),
    (
        ["--strategy", "sewa", "--k", "2", "--data", "DATA", "--averaging", "mean"],
        r"--averaging.*must be one of",
    ),
    (["--strategy", "sewa", "--k", "2", "--data", "DATA", "--dtype", "int8"], r"`--dtype` must be auto"),
    (["--strategy", "uniform", "--device", "gpu"], r"`--device` must be auto, cpu"),
    (["--strategy", "uniform", "--last-n", "0"], r"`--last-n` must be >= 1"),
    (["--strategy", "sewa", "--k", "2", "--data", "BAD_JSONL"], r"bad\.jsonl:1.*'text'"),
]


@pytest.mark.parametrize(("extra", "match"), BAD_INPUT, ids=[" ".join(extra) for extra, _ in BAD_INPUT])
def test_bad_input_fails_cleanly(
    run_dir: Path, data_file: Path, tmp_path: Path, extra: list[str], match: str
) -> None:
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"prompt": "no text"}\n')
    extra = [str(data_file) if a == "DATA" else str(bad_jsonl) if a == "BAD_JSONL" else a for a in extra]
    argv = ["sewa", "average", "--checkpoints", str(run_dir), *extra, "--output", str(tmp_path / "out")]
    check_cli_fails_cleanly(argv, match, paths=[run_dir, tmp_path], output=tmp_path / "out")


def test_missing_and_incompatible_checkpoints_fail_cleanly(run_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    argv = ["sewa", "average", "--strategy", "uniform", "--output", str(output), "--checkpoints"]
    check_cli_fails_cleanly(
        [*argv, str(tmp_path / "missing")], "does not exist", paths=[tmp_path], output=output
    )
    other = tmp_path / "other"
    state = load_state_dict(_folders(run_dir)[0])
    state["lm_head.weight"] = torch.zeros(3, 3)
    save_state_dict(state, other)
    check_cli_fails_cleanly(
        [*argv, str(_folders(run_dir)[0]), str(other)],
        "'lm_head.weight' has shape",
        paths=[tmp_path, run_dir],
        output=output,
    )
