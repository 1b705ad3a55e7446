"""A training command built on the kit, end to end through the real CLI: the one output layout, --resume,
--overwrite, no pickle, every bad input refused before any side effect."""

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from paperpack.core import cli
from paperpack.core.commands import (
    TRAINING_COMMAND_FLAGS,
    TRAINING_COMMAND_REQUIRED,
    add_shared_arguments,
    add_training_arguments,
    check_training_output,
)
from paperpack.core.files import OUTPUT_MARKER
from paperpack.core.testing.contracts import check_cli_fails_cleanly

COMMAND = "toy train"


def configure(parser):
    from transformers import TrainingArguments

    commands = parser.add_subparsers(dest="toy_command")
    train = commands.add_parser("train", help="train a causal LM on texts")
    names = add_training_arguments(train, TrainingArguments)
    add_shared_arguments(
        train,
        *TRAINING_COMMAND_FLAGS,
        "max_length",
        required=TRAINING_COMMAND_REQUIRED,
        defaults={"max_length": 32},
    )
    train.set_defaults(handler=run_train, training_fields=names)


def run_train(args):
    from transformers import Trainer, TrainingArguments

    from paperpack.core.data import CausalLMCollator, read_jsonl, tokenize_texts
    from paperpack.core.hf import (
        ArgumentsAsJson,
        command_training_args,
        load_model_and_tokenizer,
        save_trained_model,
    )
    from paperpack.core.validation import check_finite

    # Every check before the first side effect.
    output = check_training_output(
        args.output,
        command=COMMAND,
        overwrite=args.overwrite,
        resume=args.resume,
        inputs=[args.model, args.data],
    )
    arguments = command_training_args(
        args,
        args.training_fields,
        cls=TrainingArguments,
        output=args.output,
        save_strategy="steps",
        logging_steps=1,
    )
    texts = [record["text"] for record in read_jsonl(args.data)]
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    output.open()
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=tokenize_texts(tokenizer, texts, max_length=args.max_length),
        data_collator=CausalLMCollator(tokenizer),
        callbacks=[ArgumentsAsJson()],
    )
    trainer.train(resume_from_checkpoint=str(output.resume_from) if output.resume_from else None)
    check_finite("the trained weights", model.state_dict(), hint="lower `learning_rate`")
    save_trained_model(trainer, output.folder, tokenizer=tokenizer)
    return 0


@pytest.fixture
def toy_cli(monkeypatch):
    commands = {"toy": EntryPoint("toy", "x:configure", cli.COMMANDS_GROUP)}
    monkeypatch.setattr(cli, "discover", lambda group: commands if group == cli.COMMANDS_GROUP else {})
    monkeypatch.setattr(EntryPoint, "load", lambda self: configure)


@pytest.fixture
def data_file(tmp_path, tiny_texts):
    path = tmp_path / "inputs" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in tiny_texts[:16]))
    return path


def train_args(model, data, output, *extra):
    return [
        "toy", "train", "--model", str(model), "--data", str(data), "--output", str(output),
        "--max-steps", "4", "--save_steps", "2", "--per-device-train-batch-size", "4", "--learning-rate", "1e-3",
        "--device", "cpu", "--no-progress", "--seed", "0", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_one_layout_resume_overwrite_and_no_pickle(toy_cli, tiny_lm_dir, data_file, tmp_path):
    from transformers.trainer_utils import get_last_checkpoint

    from paperpack.core.checkpoints import load_state_dict
    from paperpack.core.hf import load_model_and_tokenizer

    output = tmp_path / "run"
    assert cli.main(train_args(tiny_lm_dir, data_file, output)) == 0
    top = {path.name for path in output.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_args.json", OUTPUT_MARKER} <= top
    assert {"checkpoint-2", "checkpoint-4"} <= top
    assert not list(output.rglob("training_args.bin")), "a pickle was left in the output"
    assert json.loads((output / "checkpoint-2" / "training_args.json").read_text())["max_steps"] == 4
    model, _ = load_model_and_tokenizer(
        output, device="cpu"
    )  # the output is the next command's input as it is
    before = load_state_dict(tiny_lm_dir / "model.safetensors")
    assert any(
        not torch.equal(before[key], value) for key, value in model.state_dict().items() if key in before
    )

    # A rerun needs --overwrite; without it nothing changes.
    check_cli_fails_cleanly(train_args(tiny_lm_dir, data_file, output), "--overwrite", paths=[tmp_path])
    # --resume continues from the last checkpoint to a longer run.
    longer = train_args(tiny_lm_dir, data_file, output, "--resume")
    longer[longer.index("--max-steps") + 1] = "6"
    assert cli.main(longer) == 0
    assert Path(get_last_checkpoint(str(output))).name == "checkpoint-6"
    assert json.loads((output / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    # --overwrite replaces the earlier output as a whole.
    assert cli.main(train_args(tiny_lm_dir, data_file, output, "--overwrite", "--max-steps", "2")) == 0
    assert not (output / "checkpoint-6").exists() and (output / "checkpoint-2").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-steps", "0"], r"`--max-steps` must be >= 1 \(or -1: train `--num-train-epochs`\), got 0"),
        (["--learning-rate", "nan"], r"`--learning-rate` must be a finite number, got 'nan'"),
        (["--adam_beta1", "1.5"], r"`--adam_beta1` must be in \[0, 1\), got 1.5"),
        (["--lr", "1e-5"], r"unrecognized arguments: --lr 1e-5"),
        (["--resume"], r"`--resume` continues an earlier run of `toy train`"),
        (
            ["--resume", "--overwrite"],
            r"`--resume` continues the run in --output and `--overwrite` replaces it",
        ),
        (["--device", "cuda:7"], r"CUDA is not available|cuda:7"),
    ],
)
def test_bad_input_is_refused_before_any_side_effect(toy_cli, tiny_lm_dir, data_file, extra, message):
    root = data_file.parent.parent
    argv = train_args(tiny_lm_dir, data_file, root / "run", *extra)
    check_cli_fails_cleanly(argv, message, paths=[root, tiny_lm_dir], output=root / "run")


@pytest.mark.slow
def test_bad_data_and_overlapping_output(toy_cli, tiny_lm_dir, data_file, tmp_path):
    latin = data_file.parent / "latin.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    check_cli_fails_cleanly(
        train_args(tiny_lm_dir, latin, tmp_path / "run"), r"latin.jsonl:1 is not UTF-8 text", paths=[tmp_path]
    )
    check_cli_fails_cleanly(train_args(tiny_lm_dir, data_file, data_file), "overlap|input", paths=[tmp_path])
    check_cli_fails_cleanly(
        train_args(tiny_lm_dir, data_file, tiny_lm_dir / "run"),
        "overlap|input",
        paths=[tiny_lm_dir],
        output=tiny_lm_dir / "run",
    )
