"""The CLI convention: flags from configs, --config files, shared vocabulary, errors naming the flag as typed."""

import argparse
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from typing import Literal

import pytest

from paperpack.core import cli
from paperpack.core.arguments import (
    ArgumentParser,
    add_config_arguments,
    add_config_file_argument,
    add_flag,
    config_overrides,
    describe_arguments,
    flag_name,
    supported_fields,
)
from paperpack.core.commands import DTYPE_NAMES, add_shared_arguments, resume_checkpoint
from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int, check_literal_fields


@dataclass
class ToyConfig:
    zo_rank: int = field(default=8, metadata={"help": "r, the rank"})
    eps: float = field(default=1e-3, metadata={"help": "ρ, 5% of nothing"})
    estimate: Literal["one_sided", "two_sided"] = field(default="two_sided", metadata={"help": "κ"})
    bits: Literal[4, 8] = field(default=8, metadata={"help": "bits"})
    scale_by_rank: bool = field(default=False, metadata={"help": "τ ~ N(0, I/r)"})
    targets: list[str] = field(default_factory=lambda: ["q_proj"], metadata={"help": "modules"})
    pair: tuple[int, int] = field(default=(1, 2), metadata={"help": "two ints"})
    extra: dict[str, int] | None = field(default=None, metadata={"help": "a JSON object"})
    label: str | None = field(default=None, metadata={"help": "a name"})

    def __post_init__(self) -> None:
        check_int("zo_rank", self.zo_rank, minimum=1)
        check_literal_fields(self)


def toy_parser(**kwargs):
    parser = ArgumentParser(prog="paperpack toy run")
    names = add_config_arguments(parser, ToyConfig, **kwargs)
    add_config_file_argument(parser)
    return parser, names


def parse_error(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as raised:
        parser.parse_args(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err  # one line
    return err


def test_every_field_becomes_a_flag_in_both_spellings():
    parser, names = toy_parser()
    assert names == [
        "zo_rank",
        "eps",
        "estimate",
        "bits",
        "scale_by_rank",
        "targets",
        "pair",
        "extra",
        "label",
    ]
    dashed = parser.parse_args(
        ["--zo-rank", "4", "--scale-by-rank", "--targets", "a", "b", "--pair", "3", "4"]
    )
    underscored = parser.parse_args(
        ["--zo_rank", "4", "--scale_by_rank", "--targets", "a", "b", "--pair", "3", "4"]
    )
    expected = {"zo_rank": 4, "scale_by_rank": True, "targets": ["a", "b"], "pair": (3, 4)}
    assert config_overrides(dashed, names) == config_overrides(underscored, names) == expected
    assert config_overrides(parser.parse_args([]), names) == {}
    args = parser.parse_args(
        ["--no-scale_by_rank", "--bits", "4", "--extra", '{"a": 1}', "--estimate", "one_sided"]
    )
    assert config_overrides(args, names) == {
        "scale_by_rank": False,
        "bits": 4,
        "extra": {"a": 1},
        "estimate": "one_sided",
    }
    assert ToyConfig(**config_overrides(args, names)).bits == 4


def test_help_shows_one_spelling_the_choices_and_the_dataclass_defaults():
    parser, _ = toy_parser()
    text = " ".join(parser.format_help().split())
    assert "--zo-rank INT r, the rank (default: 8)" in text
    assert "--zo_rank" not in text  # accepted, not shown twice
    assert "ρ, 5% of nothing (default: 0.001)" in text
    assert "--estimate {one_sided,two_sided}" in text and "(default: two_sided)" in text
    assert "--scale-by-rank, --no-scale-by-rank" in text and "(default: False)" in text
    assert "(default: ['q_proj'])" in text


def test_bad_values_name_the_flag_as_typed(capsys):
    parser, _ = toy_parser()
    assert parse_error(parser, ["--zo_rank", "1e3"], capsys).endswith(
        "`--zo_rank` must be an integer, got '1e3'"
    )
    assert parse_error(parser, ["--eps", "nan"], capsys).endswith(
        "`--eps` must be a finite number, got 'nan'"
    )
    assert parse_error(parser, ["--eps", "fast"], capsys).endswith("`--eps` must be a number, got 'fast'")
    message = parse_error(parser, ["--estimate", "both"], capsys)
    assert (
        message
        == "paperpack toy run: error: `--estimate` must be one of 'one_sided', 'two_sided', got 'both'"
    )
    assert "`--bits` must be one of 4, 8, got '5'" in parse_error(parser, ["--bits", "5"], capsys)
    assert "`--extra` must be a JSON object" in parse_error(parser, ["--extra", "[1]"], capsys)
    assert "argument --pair: expected 2 arguments" in parse_error(parser, ["--pair", "1"], capsys)


def test_abbreviations_are_refused_and_the_meant_flag_suggested(capsys):
    parser, _ = toy_parser()
    message = parse_error(parser, ["--zo-ran", "4"], capsys)
    assert "unrecognized arguments: --zo-ran 4 (did you mean --zo-rank?)" in message
    assert "unrecognized arguments: --est" in parse_error(parser, ["--est", "one_sided"], capsys)


def test_rename_and_errors_of_the_config_name_the_flag():
    parser, names = toy_parser(rename={"zo_rank": "rank"}, exclude=["label"])
    assert "label" not in names
    args = parser.parse_args(["--rank", "0"])
    with pytest.raises(ConfigError) as raised:
        ToyConfig(**config_overrides(args, names))
    assert describe_arguments(args, str(raised.value)) == "`--rank` must be >= 1, got 0"
    assert flag_name(parser.parse_args([]), "zo_rank") == "`--rank`"  # not typed: the flag, not the field
    assert describe_arguments(args, "`unknown` stays") == "`unknown` stays"


def test_config_classes_are_checked_when_flags_are_made():
    parser = ArgumentParser(prog="x")
    with pytest.raises(TypeError, match="no init field"):
        add_config_arguments(parser, ToyConfig, exclude=["nope"])
    with pytest.raises(TypeError, match="must be a dataclass"):
        add_config_arguments(parser, ToyConfig(), exclude=[])

    @dataclass
    class Opaque:
        callback: object = None

    assert supported_fields(Opaque) == []
    with pytest.raises(TypeError, match="cannot be a command-line flag; exclude it"):
        add_config_arguments(ArgumentParser(prog="x"), Opaque)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_config_file_is_read_as_trl_reads_it_and_the_command_line_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("PAPERPACK_TEST_VAR", raising=False)
    recipe = write(
        tmp_path / "run.yaml",
        "zo_rank: 16\neps: 5e-1\nscale_by_rank: true\ntargets: [a, b]\nestimate: one_sided\n"
        "env:\n  PAPERPACK_TEST_VAR: 1\n",
    )
    parser, names = toy_parser()
    args = parser.parse_args(["--eps", "0.25", "--config", recipe, "--zo-rank", "32"])
    assert config_overrides(args, names) == {
        "zo_rank": 32,  # typed after --config
        "eps": 0.25,  # typed before --config
        "estimate": "one_sided",
        "scale_by_rank": True,
        "targets": ["a", "b"],
    }
    assert os.environ["PAPERPACK_TEST_VAR"] == "1"
    assert args.config == recipe
    assert flag_name(args, "estimate") == f"`estimate` in {recipe}"
    assert describe_arguments(args, "`zo_rank` and `estimate`") == f"`--zo-rank` and `estimate` in {recipe}"


def test_config_file_keys_may_use_the_renamed_flag(tmp_path):
    parser, names = toy_parser(rename={"zo_rank": "rank"})
    args = parser.parse_args(["--config", write(tmp_path / "a.yaml", "rank: 2\n")])
    assert config_overrides(args, names) == {"zo_rank": 2}
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", write(tmp_path / "b.yaml", "rank: 2\nzo_rank: 3\n")])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zo_rnk: 2\n", "unknown key(s) 'zo_rnk' (did you mean 'zo_rank'?)"),
        ("zo_rank: 1e3\n", "`zo_rank` in {path} must be an integer, got 1000.0"),
        ("eps: 1e400\n", "`eps` in {path} must be a finite number, got inf"),
        ("scale_by_rank: maybe\n", "`scale_by_rank` in {path} must be true or false, got 'maybe'"),
        ("estimate: both\n", "`estimate` in {path} must be one of 'one_sided', 'two_sided', got 'both'"),
        ("- a\n- b\n", "must hold a mapping of field names to values, got list"),
        ("a: [1\n", "{path}:2:1: not valid YAML"),
        ("eps: 1\neps: 2\n", "duplicate key 'eps' (first on line 1)"),
        ("env: [1]\n", "`env` must be a mapping"),
    ],
)
def test_bad_config_files_are_reported_with_the_file_and_key(tmp_path, capsys, text, message):
    path = write(tmp_path / "run.yaml", text)
    parser, _ = toy_parser()
    assert message.format(path=path) in parse_error(parser, ["--config", path], capsys)


def test_missing_and_non_utf8_config_files(tmp_path, capsys):
    parser, _ = toy_parser()
    assert "does not exist" in parse_error(parser, ["--config", str(tmp_path / "none.yaml")], capsys)
    bad = tmp_path / "latin.yaml"
    bad.write_bytes(b"label: ok\nname: caf\xe9\n")
    assert f"{bad}:2: not UTF-8 text (byte 0xe9)" in parse_error(parser, ["--config", str(bad)], capsys)


def test_required_flags_may_come_from_the_config_file(tmp_path, capsys):
    parser = ArgumentParser(prog="cmd")
    add_shared_arguments(parser, "model", "output", "config", required=("model", "output"))
    assert "the following arguments are required: --model, --output" in parse_error(parser, [], capsys)
    args = parser.parse_args(["--output", "o", "--config", write(tmp_path / "c.yaml", "model: m\n")])
    assert (args.model, args.output) == ("m", "o")


def test_shared_vocabulary_spellings_defaults_and_checks(capsys):
    parser = ArgumentParser(prog="cmd")
    add_shared_arguments(
        parser,
        "model",
        "data",
        "output",
        "overwrite",
        "device",
        "dtype",
        "seed",
        "max_length",
        "batch_size",
        "progress",
        defaults={"max_length": 1024},
    )
    args = parser.parse_args([])
    assert (args.device, args.dtype, args.seed, args.max_length, args.progress, args.overwrite) == (
        "auto",
        "auto",
        0,
        1024,
        True,
        False,
    )
    args = parser.parse_args(["--max_length", "8", "--no-progress", "--overwrite", "--dtype", "bf16"])
    assert (args.max_length, args.progress, args.overwrite, args.dtype) == (8, False, True, "bf16")
    assert "`--max-length` must be an integer >= 1, got 0" in parse_error(
        parser, ["--max-length", "0"], capsys
    )
    assert "`--seed` must be a non-negative integer, got -1" in parse_error(parser, ["--seed=-1"], capsys)
    assert "`--device` must be auto, cpu, cuda, cuda:N or mps, got 'gpu'" in parse_error(
        parser, ["--device", "gpu"], capsys
    )
    assert "`--dtype` must be auto, float32" in parse_error(parser, ["--dtype", "int8"], capsys)
    help_text = " ".join(parser.format_help().split())
    assert "--model DIR" in help_text and "--progress, --no-progress" in help_text
    with pytest.raises(TypeError, match="unknown shared flag"):
        add_shared_arguments(ArgumentParser(prog="x"), "modle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not in `names`"):
        add_shared_arguments(ArgumentParser(prog="x"), "model", required=("data",))


def test_dtype_names_match_the_device_module():
    from paperpack.core.device import _DTYPES

    assert set(DTYPE_NAMES) == {"auto", *_DTYPES}


def test_training_commands_take_every_training_arguments_field(capsys):
    from transformers import TrainingArguments

    from paperpack.core.commands import TRAINING_EXCLUDED, add_training_arguments
    from paperpack.core.hf import command_training_args

    parser = ArgumentParser(prog="paperpack toy train")
    names = add_training_arguments(parser, TrainingArguments)
    add_shared_arguments(parser, "output", "resume", "device", "seed", "progress", "config")
    assert not set(TRAINING_EXCLUDED) & set(names)
    assert {
        "learning_rate",
        "max_steps",
        "gradient_accumulation_steps",
        "lr_scheduler_kwargs",
        "seed",
    } <= set(names)
    args = parser.parse_args(
        "--learning_rate 1e-3 --max-steps 3 --gradient-accumulation-steps 2 --lr-scheduler-type cosine "
        '--lr_scheduler_kwargs {"num_cycles":1} --report-to none --device cpu --no-progress --seed 3'.split()
    )
    built = command_training_args(args, names, cls=TrainingArguments, output="out", save_strategy="no")
    assert (built.learning_rate, built.max_steps, built.gradient_accumulation_steps, built.seed) == (
        1e-3,
        3,
        2,
        3,
    )
    assert built.lr_scheduler_kwargs == {"num_cycles": 1} and built.use_cpu and built.disable_tqdm
    assert built.report_to == [] and built.output_dir == "out"
    help_text = " ".join(parser.format_help().split())
    assert "usage: paperpack toy train [options]" in help_text
    assert "--bf16, --no-bf16" in help_text and "(default: on a CUDA device that supports it)" in help_text
    assert "unrecognized arguments: --lr 1e-5" in parse_error(parser, ["--lr", "1e-5"], capsys)
    assert "`--learning_rate` must be a finite number, got 'nan'" in parse_error(
        parser, ["--learning_rate", "nan"], capsys
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-steps", "0"], "`--max-steps` must be >= 1 (or -1: train `--num-train-epochs`), got 0"),
        (["--max-steps", "-5"], "`--max-steps` must be >= 1 (or -1: train `--num-train-epochs`), got -5"),
        (["--num-train-epochs", "0"], "`--num-train-epochs` must be > 0, got 0.0"),
        (["--adam-beta1", "1.5"], "`--adam-beta1` must be in [0, 1), got 1.5"),
        (["--per_device_train_batch_size", "0"], "`--per_device_train_batch_size` must be >= 1, got 0"),
        (["--learning-rate", "-1"], "`--learning-rate` must be >= 0, got -1.0"),
    ],
)
def test_training_counts_mean_what_they_say(tmp_path, monkeypatch, capsys, flags, message):
    from transformers import TrainingArguments

    from paperpack.core.commands import add_training_arguments
    from paperpack.core.hf import command_training_args

    def configure(parser):
        names = add_training_arguments(parser, TrainingArguments)
        add_shared_arguments(parser, "output", required=("output",))

        def run(args):
            command_training_args(args, names, cls=TrainingArguments, output=args.output)
            return 0

        parser.set_defaults(handler=run)

    monkeypatch.setattr(
        cli,
        "discover",
        lambda group: {"toy": EntryPoint("toy", "x:y", group)} if group == cli.COMMANDS_GROUP else {},
    )
    monkeypatch.setattr(EntryPoint, "load", lambda self: configure)
    assert cli.main(["toy", "--output", str(tmp_path / "out"), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"paperpack: error: {message}"
    assert not (tmp_path / "out").exists()


def test_a_bare_command_prints_its_help_and_exits_2(monkeypatch, capsys):
    def configure(parser):
        commands = parser.add_subparsers(dest="toy_command", required=True)
        run = commands.add_parser("run", help="run it")
        run.set_defaults(handler=lambda args: 0)
        parser.set_defaults(handler=lambda args: parser.print_help())  # what meap did: exit 0

    monkeypatch.setattr(
        cli,
        "discover",
        lambda group: {"toy": EntryPoint("toy", "x:y", group)} if group == cli.COMMANDS_GROUP else {},
    )
    monkeypatch.setattr(EntryPoint, "load", lambda self: configure)
    assert cli.main(["toy"]) == 2
    assert "usage: paperpack toy" in capsys.readouterr().err
    assert cli.main(["toy", "run"]) == 0
    assert cli.main([]) == 2
    assert "usage: paperpack" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0


def test_resume_checkpoint(tmp_path):
    assert resume_checkpoint(tmp_path, None) is None
    with pytest.raises(ConfigError, match="`--resume` found no checkpoint-N folder"):
        resume_checkpoint(tmp_path, "last")
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-99").mkdir()  # no trainer_state.json: an interrupted save
    assert resume_checkpoint(tmp_path, "last") == tmp_path / "checkpoint-10"
    assert resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-2")) == tmp_path / "checkpoint-2"
    with pytest.raises(ConfigError, match="is not a Trainer checkpoint folder"):
        resume_checkpoint(tmp_path, str(tmp_path / "checkpoint-99"))


def test_plain_argparse_flags_read_from_a_config_file_too(tmp_path):
    parser = ArgumentParser(prog="cmd")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--mode", choices=["a", "b"], default="a")
    add_config_file_argument(parser)
    args = parser.parse_args(["--config", write(tmp_path / "c.yaml", "k: 5\nfast: true\nmode: b\n")])
    assert (args.k, args.fast, args.mode) == (5, True, "b")
    args = parser.parse_args(["--k", "7", "--config", str(tmp_path / "c.yaml")])
    assert args.k == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", write(tmp_path / "d.yaml", "mode: c\n")])


def test_add_flag_with_a_custom_reader():
    parser = ArgumentParser(prog="cmd")

    def shard_size(value):
        if not str(value).endswith("GB"):
            raise ValueError(f"must look like 5GB, got {value!r}")
        return str(value)

    add_flag(parser, "max_shard_size", str, help="shard size", default="5GB", convert=shard_size)
    assert parser.parse_args(["--max_shard_size", "2GB"]).max_shard_size == "2GB"
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-shard-size", "2"])
    assert isinstance(parser.parse_args([]), argparse.Namespace)
