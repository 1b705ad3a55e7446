"""`paperpack meap pretrain` / `paperpack meap sft` through the real CLI: the one output layout, resume, the
flags reaching the collator, and every bad input refused with a clear message, exit status 2 and the file
system exactly as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from paperpack.core.cli import main
from paperpack.core.files import OUTPUT_MARKER
from paperpack.core.hf import default_corpus
from paperpack.core.testing.contracts import check_cli_fails_cleanly


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def vocabulary_rows(folder: Path, key: str) -> int:
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        return int(weights.get_slice(key).get_shape()[0])


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "inputs" / "train.jsonl", [{"text": t} for t in default_corpus(60, seed=4)])


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    lines = default_corpus(40, seed=5)
    records = [{"prompt": lines[2 * i], "completion": " " + lines[2 * i + 1]} for i in range(20)]
    return write_jsonl(tmp_path / "inputs" / "sft.jsonl", records)


def command(name: str, model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "meap", name, "--model", str(model), "--data", str(data), "--output", str(output),
        "--max-steps", "2", "--max-length", "64", "--per-device-train-batch-size", "4", "--save-steps", "2",
        "--device", "cpu", "--no-progress", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_pretrain_one_layout_mask_token_and_resume(
    tiny_lm_dir: Path, text_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "meap-model"
    assert main(command("pretrain", tiny_lm_dir, text_file, output)) == 0
    top = {path.name for path in output.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "training_args.json", "checkpoint-2", OUTPUT_MARKER} <= top
    assert not list(output.rglob("training_args.bin"))  # no pickle anywhere
    tokenizer = json.loads((output / "tokenizer.json").read_text())
    assert any(token["content"] == "[MASK]" for token in tokenizer["added_tokens"])
    key = "model.embed_tokens.weight"
    assert vocabulary_rows(output, key) == vocabulary_rows(tiny_lm_dir, key) + 1
    assert sorted(p.name for p in output.parent.iterdir()) == ["meap-model"]  # no staging folder left

    # A rerun needs --overwrite or --resume; --resume continues to a longer run.
    check_cli_fails_cleanly(
        command("pretrain", tiny_lm_dir, text_file, output), "--overwrite", paths=[tmp_path]
    )
    longer = command("pretrain", tiny_lm_dir, text_file, output, "--resume")
    longer[longer.index("--max-steps") + 1] = "4"
    assert main(longer) == 0
    assert (output / "checkpoint-4").is_dir()
    assert json.loads((output / "training_args.json").read_text())["max_steps"] == 4


@pytest.mark.slow
def test_sft_flags_reach_the_collator_on_another_architecture(
    tiny_gpt2_dir: Path, sft_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paperpack.meap.collator import MEAPSFTCollator

    configs: list[Any] = []
    original = MEAPSFTCollator.__init__

    def spy(self: Any, tokenizer: Any, config: Any = None, **kwargs: Any) -> None:
        configs.append(config)
        original(self, tokenizer, config, **kwargs)

    monkeypatch.setattr(MEAPSFTCollator, "__init__", spy)
    output = tmp_path / "sft-model"
    extra = ("--min-answer-tokens", "3", "--sft-layout", "concat", "--sft_mask_ratio", "0.3", "--seed", "7")
    assert main(command("sft", tiny_gpt2_dir, sft_file, output, *extra)) == 0
    (config,) = configs
    assert (config.sft_layout, config.min_answer_tokens, config.sft_mask_ratio, config.seed) == (
        "concat",
        3,
        0.3,
        7,
    )
    assert (output / "model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    assert json.loads((output / "training_args.json").read_text())["completion_only_loss"] is True


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("pretrain", ["--mask-ratio", "1.0"], r"`--mask-ratio` must be in \[0, 1\), got 1.0"),
        ("pretrain", ["--mask-ratio", "nan"], r"`--mask-ratio` must be a finite number"),
        ("pretrain", ["--max-steps", "0"], r"`--max-steps` must be >= 1"),
        ("pretrain", ["--num-train-epochs", "0", "--max-steps", "-1"], r"`--num-train-epochs` must be > 0"),
        ("pretrain", ["--learning-rate", "nan"], r"`--learning-rate` must be a finite number"),
        ("pretrain", ["--no-add-mask-token"], r"no mask token '\[MASK\]'"),
        ("pretrain", ["--batch-size", "4"], r"unrecognized arguments: --batch-size"),
        ("pretrain", ["--grad-accum", "2"], r"unrecognized arguments: --grad-accum"),
        ("pretrain", ["--epochs", "1"], r"unrecognized arguments: --epochs"),
        ("pretrain", ["--resume"], r"`--resume` continues an earlier run of `meap pretrain`"),
        ("sft", ["--sft-layout", "interleaved"], r"`--sft-layout` must be one of 'separate', 'concat'"),
        ("sft", ["--layout", "concat"], r"unrecognized arguments: --layout"),
        ("sft", [], r"needs string fields 'prompt' and 'completion'"),
    ],
)
def test_bad_input_leaves_the_file_system_as_it_was(
    tiny_lm_dir: Path, text_file: Path, name: str, extra: list[str], message: str
) -> None:
    root = text_file.parent.parent
    argv = command(name, tiny_lm_dir, text_file, root / "run", *extra)
    check_cli_fails_cleanly(argv, message, paths=[root, tiny_lm_dir], output=root / "run")


def test_bad_paths(tiny_lm_dir: Path, text_file: Path, tmp_path: Path) -> None:
    root = text_file.parent.parent
    check_cli_fails_cleanly(
        command("pretrain", tiny_lm_dir, root / "missing.jsonl", root / "new"), "missing.jsonl", paths=[root]
    )
    check_cli_fails_cleanly(
        command("pretrain", tiny_lm_dir, text_file, tiny_lm_dir / "inside"),
        "overlap|input",
        paths=[tiny_lm_dir],
    )
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("keep me")
    check_cli_fails_cleanly(command("pretrain", tiny_lm_dir, text_file, used), "--output", paths=[tmp_path])
    latin = text_file.parent / "latin.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    check_cli_fails_cleanly(
        command("pretrain", tiny_lm_dir, latin, root / "new"), r"latin.jsonl:1 is not UTF-8", paths=[root]
    )
    check_cli_fails_cleanly(["meap"], r"usage: paperpack meap", paths=[root])


def test_sft_data_with_nothing_to_learn(tiny_lm_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "inputs"
    no_answer = write_jsonl(root / "chat.jsonl", [{"messages": [{"role": "user", "content": "hello there"}]}])
    check_cli_fails_cleanly(
        command("sft", tiny_lm_dir, no_answer, tmp_path / "a"),
        r"chat.jsonl: record 1 has no assistant turn",
        paths=[root],
        output=tmp_path / "a",
    )
    long_prompts = write_jsonl(
        root / "long.jsonl", [{"prompt": "word " * 40, "completion": " done"} for _ in range(4)]
    )
    argv = command("sft", tiny_lm_dir, long_prompts, tmp_path / "b")
    argv[argv.index("--max-length") + 1] = "8"
    check_cli_fails_cleanly(
        argv, r"`--max-length` 8 leaves no example of .*long.jsonl", paths=[root], output=tmp_path / "b"
    )
