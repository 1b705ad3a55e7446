"""The flags every ``paperpack`` command spells the same way, and the flags of training commands.

A command adds the shared vocabulary with :func:`add_shared_arguments` instead of declaring its own
``--model`` or ``--device``; a training command adds every field of its ``TrainingArguments`` class (or TRL
config) with :func:`add_training_arguments`, so ``--learning-rate`` / ``--learning_rate``, ``--max-steps``,
``--gradient-accumulation-steps`` and the rest mean what they mean in transformers and TRL.

=================  ===================================================================================
flag               meaning
=================  ===================================================================================
``--model DIR``    a local transformers model folder (never positional)
``--data FILE``    the input data (JSON Lines unless the command says otherwise)
``--eval-data``    evaluation data, same format
``--output DIR``   the output: a new or empty folder, or an earlier output of this command with
                   ``--overwrite``
``--overwrite``    replace an earlier output of this command
``--resume``       continue a training run from ``--output``'s last ``checkpoint-N`` (or ``--resume DIR``)
``--device``       ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``
``--dtype``        ``auto`` (bf16 on a capable CUDA device, else float32), ``float32``, ``bfloat16``,
                   ``float16``
``--seed``         every random choice
``--max-length``   tokens per text
``--batch-size``   texts per batch, in commands that evaluate without training (training commands take
                   ``--per-device-train-batch-size``)
``--progress``     progress bars (``--no-progress`` hides them)
``--config FILE``  values for any flag from a YAML file, as TRL's command line reads it
=================  ===================================================================================

This module imports no torch or transformers; the training helpers that need them live in
:mod:`paperpack.core.hf.training`.
"""

import argparse
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from paperpack.core.arguments import (
    add_config_arguments,
    add_config_file_argument,
    add_flag,
    supported_fields,
)
from paperpack.core.errors import ConfigError
from paperpack.core.files import check_output, output_command, remove_path, write_output_marker

__all__ = [
    "DTYPE_NAMES",
    "TRAINING_COMMAND_FLAGS",
    "TRAINING_COMMAND_REQUIRED",
    "TRAINING_EXCLUDED",
    "SharedFlag",
    "TrainingOutput",
    "add_lora_arguments",
    "add_shared_arguments",
    "add_training_arguments",
    "check_training_output",
    "resume_checkpoint",
]

#: The names of the shared flags, for :func:`add_shared_arguments`.
SharedFlag = Literal[
    "model",
    "data",
    "eval_data",
    "output",
    "overwrite",
    "resume",
    "device",
    "dtype",
    "seed",
    "max_length",
    "batch_size",
    "progress",
    "config",
]

#: The shared flags every training command takes, as
#: ``add_shared_arguments(parser, *TRAINING_COMMAND_FLAGS, ...)``: the model and data in, the one output
#: layout with ``--overwrite`` and ``--resume``, device, dtype, progress and ``--config``. A command adds what
#: else it reads (``"eval_data"``; ``"max_length"`` where its config has no ``max_length`` field of its own).
TRAINING_COMMAND_FLAGS: tuple[SharedFlag, ...] = (
    "model",
    "data",
    "output",
    "overwrite",
    "resume",
    "device",
    "dtype",
    "progress",
    "config",
)
#: The flags a training command cannot run without (``required=TRAINING_COMMAND_REQUIRED``).
TRAINING_COMMAND_REQUIRED: tuple[SharedFlag, ...] = ("model", "data", "output")

#: The names ``--dtype`` accepts (with aliases), as :func:`paperpack.core.device.resolve_dtype` reads them.
DTYPE_NAMES = (
    "auto",
    "float32",
    "fp32",
    "float",
    "bfloat16",
    "bf16",
    "float16",
    "fp16",
    "half",
    "float64",
    "fp64",
)
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
    return value


def _dtype(value: Any) -> str:
    if value not in DTYPE_NAMES:
        raise ValueError(f"must be auto, float32, bfloat16 or float16 (or fp32, bf16, fp16), got {value!r}")
    return str(value)


def _integer(value: Any, minimum: int, allowed: str) -> int:
    number = value
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be {allowed}, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
        raise ValueError(f"must be {allowed}, got {number!r}")
    return number


def _non_negative(value: Any) -> int:
    return _integer(value, 0, "a non-negative integer")


def _at_least_one(value: Any) -> int:
    return _integer(value, 1, "an integer >= 1")


@dataclass(frozen=True)
class _Shared:
    hint: Any
    help: str
    metavar: str | None = None
    default: Any = None
    convert: Any = None


_VOCABULARY: dict[str, _Shared] = {
    "model": _Shared(
        str, "a local transformers model folder (config.json, safetensors weights, tokenizer)", "DIR"
    ),
    "data": _Shared(str, "the data, a JSON Lines file (one JSON object a line)", "FILE.jsonl"),
    "eval_data": _Shared(str, "evaluation data, in the format of --data", "FILE.jsonl"),
    "output": _Shared(
        str,
        "the output folder: a new or empty one, or an earlier output of this command with --overwrite",
        "DIR",
    ),
    "overwrite": _Shared(bool, "replace an earlier output of this command at --output", default=False),
    "device": _Shared(
        str,
        "where the model runs: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps",
        "DEVICE",
        "auto",
        _device,
    ),
    "dtype": _Shared(
        str,
        "the model's dtype: auto (bfloat16 on a CUDA device that supports it, else float32), float32, "
        "bfloat16, float16",
        "DTYPE",
        "auto",
        _dtype,
    ),
    "seed": _Shared(int, "the seed of every random choice", "N", 0, _non_negative),
    "max_length": _Shared(int, "tokens per text; longer texts are truncated", "N", 256, _at_least_one),
    "batch_size": _Shared(int, "texts per batch (commands that do not train)", "N", 8, _at_least_one),
    "progress": _Shared(bool, "show progress bars", default=True),
}


def add_shared_arguments(
    parser: argparse.ArgumentParser,
    *names: SharedFlag,
    required: Collection[str] = (),
    help: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add the shared flags ``names`` (see the module docstring) with the core's spelling, help and checks.

    A name whose destination the parser already has is skipped: after :func:`add_training_arguments`,
    ``seed`` is ``TrainingArguments.seed`` (and ``max_length`` TRL's, where the config has one).

    Args:
        parser: the command's parser.
        *names: which flags, in the order the help lists them.
        required: the names the command cannot run without (given on the command line or in ``--config``).
        help: name -> help text, where the command says more than the shared text.
        defaults: name -> the command's default, where it differs from the shared one (``max_length``: 256,
            ``batch_size``: 8, ``seed``: 0, ``device`` and ``dtype``: ``"auto"``, ``progress``: True).

    Raises:
        TypeError: for an unknown name, or a name in ``required``, ``help`` or ``defaults`` not in ``names``.

    Examples:
        >>> from paperpack.core.arguments import ArgumentParser
        >>> from paperpack.core.commands import add_shared_arguments
        >>> parser = ArgumentParser(prog="paperpack thing run")
        >>> add_shared_arguments(parser, "model", "output", "device", "seed", required=("model", "output"))
        >>> args = parser.parse_args(["--model", "m", "--output", "out", "--device", "cuda:1"])
        >>> args.model, args.output, args.device, args.seed
        ('m', 'out', 'cuda:1', 0)
    """
    allowed = set(get_args(SharedFlag))
    unknown = sorted({*names, *required, *(help or {}), *(defaults or {})} - allowed)
    if unknown:
        raise TypeError(
            f"unknown shared flag(s) {', '.join(unknown)}; known: {', '.join(get_args(SharedFlag))}"
        )
    extra = sorted({*required, *(help or {}), *(defaults or {})} - set(names))
    if extra:
        raise TypeError(f"{', '.join(extra)} given in `required`, `help` or `defaults` but not in `names`")
    present = {action.dest for action in parser._actions}
    for name in names:
        if name in present:
            continue
        if name == "config":
            add_config_file_argument(parser)
        elif name == "resume":
            parser.add_argument(
                "--resume",
                nargs="?",
                const="last",
                default=None,
                metavar="DIR",
                help=(help or {}).get(
                    "resume",
                    "continue an interrupted run of this command from --output: its last checkpoint-N "
                    "folder, or the checkpoint folder DIR",
                ),
            )
        else:
            spec = _VOCABULARY[name]
            default = (defaults or {}).get(name, spec.default)
            add_flag(
                parser,
                name,
                spec.hint,
                help=(help or {}).get(name, spec.help),
                default=default,
                required=name in required,
                metavar=spec.metavar,
                convert=spec.convert,
            )


def _real(value: Any, allowed: str, test: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not test(number):
        raise ValueError(f"must be {allowed}, got {value!r}")
    return number


def _positive(value: Any) -> float:
    return _real(value, "a number > 0", lambda x: 0 < x < float("inf"))


def _probability(value: Any) -> float:
    return _real(value, "a number in [0, 1)", lambda x: 0 <= x < 1)


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the LoRA flags ``--lora-r``, ``--lora-alpha``, ``--lora-dropout``, ``--lora-target-modules``.

    Given ``--lora-r R``, the command trains a PEFT LoRA adapter of rank R instead of every weight and writes
    the adapter folder; :func:`paperpack.core.hf.lora.lora_config` turns the flags into a ``LoraConfig`` and
    :func:`paperpack.core.hf.lora.wrap_lora` wraps the model. The names are TRL's (``lora_r``,
    ``lora_alpha``, ...), spelled with dashes as every flag is.

    Examples:
        >>> from paperpack.core.arguments import ArgumentParser
        >>> from paperpack.core.commands import add_lora_arguments
        >>> parser = ArgumentParser(prog="paperpack thing train")
        >>> add_lora_arguments(parser)
        >>> args = parser.parse_args(["--lora-r", "8", "--lora-target-modules", "q_proj", "v_proj"])
        >>> args.lora_r, args.lora_alpha, args.lora_target_modules
        (8, None, ['q_proj', 'v_proj'])
    """
    group = parser.add_argument_group("LoRA (train an adapter instead of every weight)")
    add_flag(
        group,
        "lora_r",
        int,
        metavar="R",
        help="train a PEFT LoRA adapter of rank R and write the adapter folder (default: train every weight)",
        convert=_at_least_one,
    )
    add_flag(
        group,
        "lora_alpha",
        float,
        metavar="ALPHA",
        help="the adapter's scale numerator α (the update is α/r · B A; default: 2r, TRL's ratio)",
        convert=_positive,
    )
    add_flag(
        group,
        "lora_dropout",
        float,
        metavar="P",
        help="dropout on the adapter's input (default: 0)",
        convert=_probability,
    )
    add_flag(
        group,
        "lora_target_modules",
        list[str],
        metavar="NAME",
        help="the modules the adapter wraps, by the last part of their names, e.g. q_proj v_proj (default: "
        "PEFT's choice for the architecture)",
    )


#: ``TrainingArguments`` fields a training command sets from the shared flags instead of flags of their own:
#: ``--output`` (``output_dir``), ``--resume`` (``resume_from_checkpoint``), ``--device`` (``use_cpu``) and
#: ``--progress`` (``disable_tqdm``).
TRAINING_EXCLUDED = (
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "use_cpu",
    "disable_tqdm",
)

# transformers' defaults that paperpack.core.hf.machine_defaults() replaces on every machine.
_MACHINE_DEFAULTS = {
    "bf16": "on a CUDA device that supports it",
    "fp16": False,
    "dataloader_pin_memory": "on a CUDA device",
    "report_to": "none",
}


def add_training_arguments(
    parser: argparse.ArgumentParser,
    args_class: type[Any],
    *,
    exclude: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
    title: str | None = None,
) -> list[str]:
    """Add one flag per field of a ``TrainingArguments`` class, in both spellings.

    The class is ``transformers.TrainingArguments``, a TRL config or a package's subclass (``ZOConfig``).
    Left out: the fields set from shared flags (:data:`TRAINING_EXCLUDED`), fields whose type cannot be typed
    on a command line (``parallelism_config``), and ``exclude``. The help shows the defaults the command uses
    (bf16 only on a capable CUDA device, no trackers; see :func:`paperpack.core.hf.machine_defaults`).

    Args:
        parser: the training command's parser.
        args_class: the arguments dataclass the command builds.
        exclude: more fields to leave out (the command sets them itself).
        rename: field -> flag name, for a package's own fields that read badly as flags.
        title: the help section's title (default: the class name).

    Returns:
        The field names that got a flag, for :func:`paperpack.core.hf.command_training_args`.

    Examples:
        >>> from transformers import TrainingArguments
        >>> from paperpack.core.arguments import ArgumentParser, config_overrides
        >>> from paperpack.core.commands import add_training_arguments
        >>> parser = ArgumentParser(prog="paperpack thing train")
        >>> names = add_training_arguments(parser, TrainingArguments)
        >>> args = parser.parse_args(["--learning-rate", "1e-4", "--max_steps", "5"])
        >>> config_overrides(args, names)
        {'max_steps': 5, 'learning_rate': 0.0001}
    """
    supported = set(supported_fields(args_class))
    fields = [f for f in getattr(args_class, "__dataclass_fields__", {}).values() if f.init]
    skipped = {*TRAINING_EXCLUDED, *exclude, *(f.name for f in fields if f.name not in supported)}
    shown = {name: value for name, value in _MACHINE_DEFAULTS.items() if name not in skipped}
    return add_config_arguments(
        parser,
        args_class,
        exclude=sorted(skipped & {f.name for f in fields}),
        rename=rename,
        title=title
        or f"training arguments ({args_class.__module__.split('.')[0]}.{args_class.__name__}; "
        "each flag also accepts its field name, e.g. --learning_rate)",
        show_defaults=shown,
    )


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def resume_checkpoint(output: str | os.PathLike[str], resume: str | None) -> Path | None:
    """The Trainer checkpoint that ``--resume`` names, or None without it.

    ``last`` is the last ``checkpoint-N`` of ``output``; anything else is the checkpoint folder itself.

    Checks only; reads no weights. A checkpoint folder is one with ``trainer_state.json``.

    Raises:
        ConfigError: naming ``--resume`` when there is no such checkpoint.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.commands import resume_checkpoint
        >>> output = Path(tempfile.mkdtemp())
        >>> for step in (5, 10):
        ...     (output / f"checkpoint-{step}").mkdir()
        ...     _ = (output / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        >>> resume_checkpoint(output, "last").name
        'checkpoint-10'
    """
    if resume is None:
        return None
    if resume != "last":
        folder = Path(resume)
        if not (folder / "trainer_state.json").is_file():
            raise ConfigError(
                f"`--resume` {resume!r} is not a Trainer checkpoint folder (no trainer_state.json in it)"
            )
        return folder
    root = Path(output)
    steps = sorted(
        (int(match.group(1)), child)
        for child in (root.iterdir() if root.is_dir() else [])
        if (match := _CHECKPOINT.match(child.name)) and (child / "trainer_state.json").is_file()
    )
    if not steps:
        raise ConfigError(
            f"`--resume` found no checkpoint-N folder in {str(output)!r}; run without --resume to start anew"
        )
    return steps[-1][1]


@dataclass(frozen=True)
class TrainingOutput:
    """Where a training command writes, checked: see :func:`check_training_output`.

    Attributes:
        folder: ``--output``: the final model at its top, ``checkpoint-N`` folders beside it.
        command: the command, recorded in the folder's marker (``"tezo finetune"``).
        resume_from: the checkpoint to resume from (``--resume``), or None for a new run.
        replace: whether an earlier output of the command is replaced (``--overwrite``).
    """

    folder: Path
    command: str
    resume_from: Path | None
    replace: bool

    def open(self) -> Path:
        """Prepare the folder for training; the first side effect, after every check.

        A new run empties an earlier output of the command (checked to hold nothing else), creates the folder
        and marks it as the command's; a resumed run keeps everything. Checkpoints are then written straight
        into the folder by the Trainer, so that ``--resume`` finds them after a crash.
        """
        if self.resume_from is None and self.folder.exists() and any(self.folder.iterdir()):
            remove_path(self.folder)  # an earlier output of ours and nothing else: check_output made sure
        self.folder.mkdir(parents=True, exist_ok=True)
        write_output_marker(self.folder, command=self.command)
        return self.folder


def check_training_output(
    output: str | os.PathLike[str],
    *,
    command: str,
    overwrite: bool = False,
    resume: str | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> TrainingOutput:
    """Check ``--output``, ``--overwrite`` and ``--resume`` of a training command before any side effect.

    A new run needs a new or empty folder, or an earlier output of ``command`` with ``overwrite``
    (:func:`paperpack.core.files.check_output`). ``--resume`` continues an earlier output of ``command``: the
    folder must be one, and hold the checkpoint (:func:`resume_checkpoint`).

    Args:
        output: ``--output``.
        command: the command, e.g. ``"tezo finetune"``.
        overwrite: ``--overwrite``.
        resume: ``--resume`` (None, ``"last"`` or a checkpoint folder).
        inputs: the command's inputs (model folder, data files); the output may not overlap one.

    Returns:
        The checked output; call :meth:`TrainingOutput.open` once everything else is checked too.

    Raises:
        ConfigError: for ``--resume`` with ``--overwrite``, or without a resumable earlier output.
        OutputExistsError: when ``--output`` holds something else (the message names the fix).
        CheckpointError: when ``--output`` overlaps an input.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.commands import check_training_output
        >>> planned = check_training_output(Path(tempfile.mkdtemp()) / "run", command="toy train")
        >>> planned.resume_from is None, planned.open().is_dir()
        (True, True)
    """
    folder = Path(output)
    if resume is None:
        check_output(folder, command=command, overwrite=overwrite, inputs=inputs)
        return TrainingOutput(folder, command, None, overwrite)
    if overwrite:
        raise ConfigError("`--resume` continues the run in --output and `--overwrite` replaces it; give one")
    check_output(folder, command=command, overwrite=True, inputs=inputs)
    if output_command(folder) != command:
        raise ConfigError(
            f"`--resume` continues an earlier run of `{command}`, but --output {str(output)!r} is not one; "
            "give the --output of that run"
        )
    return TrainingOutput(folder, command, resume_checkpoint(folder, resume), False)
