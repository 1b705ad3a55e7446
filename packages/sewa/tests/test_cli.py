"""`paperpack sewa average` on saved tiny_causal_lm() folders: baselines, SeWA, and clean failures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.cli import main
from paperpack.core.hf import default_corpus
from paperpack.core.testing.contracts import assert_no_partial_output, assert_state_dicts_equal
from paperpack.sewa import average_checkpoints
from paperpack.sewa.merge import find_checkpoints

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
def test_baselines_match_average_checkpoints(
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
    expected = average_checkpoints(states, strategy, k=k)
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


def test_errors_are_clear_and_leave_nothing_behind(
    run_dir: Path, data_file: Path, tmp_path: Path, capsys
) -> None:
    folders = [str(p) for p in _folders(run_dir)]

    def fails(argv: list[str], message: str) -> None:
        assert main(["sewa", "average", *argv]) == 2
        assert message in capsys.readouterr().err

    inside = _folders(run_dir)[0] / "avg"
    fails(["--checkpoints", *folders, "--strategy", "uniform", "--output", str(inside)], "overlaps input")
    assert_no_partial_output(inside)
    out = tmp_path / "out"
    fails(["--checkpoints", *folders, "--strategy", "sewa", "--k", "2", "--output", str(out)], "needs --data")
    fails(
        ["--checkpoints", *folders, "--strategy", "uniform", "--data", str(data_file), "--output", str(out)],
        "--data is used by --strategy sewa only",
    )
    fails(
        ["--checkpoints", *folders, "--strategy", "lawa", "--output", str(out)], "strategy 'lawa' needs `k`"
    )
    fails(
        ["--checkpoints", *folders, "--strategy", "lawa", "--k", "9", "--output", str(out)],
        "`k` must be <= 5, got 9",
    )
    fails(
        ["--checkpoints", str(tmp_path / "missing"), "--strategy", "uniform", "--output", str(out)],
        "does not exist",
    )
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"prompt": "no text"}\n')
    fails(
        [
            "--checkpoints",
            *folders,
            "--strategy",
            "sewa",
            "--k",
            "2",
            "--data",
            str(bad_jsonl),
            "--output",
            str(out),
        ],
        "needs a string field 'text'",
    )
    other = tmp_path / "other"
    other.mkdir()
    torch_state = load_state_dict(folders[0])
    torch_state["lm_head.weight"] = torch.zeros(3, 3)
    from paperpack.core.checkpoints import save_state_dict

    save_state_dict(torch_state, other)
    fails(
        ["--checkpoints", folders[0], str(other), "--strategy", "uniform", "--output", str(out)],
        "'lm_head.weight' has shape",
    )
    assert_no_partial_output(out)


def test_a_users_folder_is_refused_and_left_as_it_was(run_dir: Path, tmp_path: Path, capsys) -> None:
    """Issues 13 and 15: `sewa average --output DIR` on a folder of the user's deleted its *.safetensors."""
    folders = [str(p) for p in _folders(run_dir)[:2]]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fisher_stats.safetensors").write_bytes(b"the user's statistics")
    (mine / "adapter_config.json").write_text("{}")
    argv = ["sewa", "average", "--checkpoints", *folders, "--strategy", "uniform", "--output", str(mine)]
    assert main(argv) == 2
    assert "paperpack did not write" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["adapter_config.json", "fisher_stats.safetensors"]
    assert (mine / "fisher_stats.safetensors").read_bytes() == b"the user's statistics"
    out = tmp_path / "out"
    assert main([*argv[:-1], str(out)]) == 0
    assert main([*argv[:-1], str(out)]) == 2  # an earlier output: replaced only when asked
    assert "already exists" in capsys.readouterr().err
