"""PanaceaConfig parsing and checks; the trainer's refusals of bad input, which leave the model untouched."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import HfArgumentParser, TrainingArguments

from paperpack.core.errors import ConfigError
from paperpack.panacea import PanaceaConfig, PanaceaTrainer

from .conftest import trainable_state


def test_config_parses_with_hf_argument_parser(tmp_path: Path) -> None:
    (args,) = HfArgumentParser(PanaceaConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--panacea_rho",
            "0.5",
            "--panacea_lambda",
            "1e-2",
            "--harmful_loss_clamp",
            "4",
            "--perturb_parameters",
            "q_proj",
            "v_proj",
            "--final_perturbation",
            "mean",
            "--harmful_batch_size",
            "3",
            "--perturbed_pass_pieces",
            "4",
            "--use_cpu",
            "true",
            "--report_to",
            "none",
        ]
    )
    assert isinstance(args, PanaceaConfig)
    assert (args.panacea_rho, args.panacea_lambda, args.harmful_loss_clamp) == (0.5, 1e-2, 4.0)
    assert (args.perturb_parameters, args.final_perturbation, args.harmful_batch_size) == (
        ["q_proj", "v_proj"],
        "mean",
        3,
    )
    assert args.perturbed_pass_pieces == 4
    defaults = PanaceaConfig(str(tmp_path), use_cpu=True, report_to="none")
    assert (defaults.panacea_rho, defaults.panacea_lambda, defaults.harmful_loss_clamp) == (1.0, 1e-3, 5.0)
    assert defaults.perturb_parameters is None and defaults.harmful_batch_size is None
    assert defaults.perturbed_pass_pieces is None  # ours: chosen from the model (2 full, 1 LoRA)
    assert defaults.learning_rate == TrainingArguments(str(tmp_path), use_cpu=True).learning_rate


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"panacea_rho": 0.0}, "`panacea_rho` must be > 0, got 0.0"),
        ({"panacea_rho": -1.0}, "`panacea_rho` must be > 0, got -1.0"),
        ({"panacea_rho": float("nan")}, "`panacea_rho` must be a finite number, got nan"),
        ({"panacea_lambda": -0.1}, "`panacea_lambda` must be >= 0, got -0.1"),
        ({"harmful_loss_clamp": 0.0}, "`harmful_loss_clamp` must be > 0, got 0.0"),
        ({"harmful_batch_size": 0}, "`harmful_batch_size` must be >= 1, got 0"),
        *[
            (
                {"perturbed_pass_pieces": value},
                "`perturbed_pass_pieces` must be an integer >= 1, or None to let Panacea choose (2 when at "
                f"least half of the parameters are trainable, else 1), got {value!r}",
            )
            for value in (0, -2, 1.5, True, "auto")
        ],
        (
            {"final_perturbation": "first"},
            "`final_perturbation` must be one of 'last_step', 'mean', 'none', got 'first'",
        ),
        (
            {"perturb_parameters": ["q_proj("]},
            "`perturb_parameters` holds an invalid regular expression 'q_proj('",
        ),
        ({"perturb_parameters": []}, "`perturb_parameters` must name at least one pattern"),
        (
            {"perturb_parameters": "q_proj"},
            "`perturb_parameters` must be a list of regular expressions, got 'q_proj'",
        ),
        ({"fsdp": "full_shard"}, "`fsdp` and `deepspeed` are not supported by Panacea"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        PanaceaConfig(str(tmp_path), use_cpu=True, report_to="none", **overrides)


class _Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        return iter([])


def _bad_harmful(harmful_data: list[dict[str, Any]]) -> list[tuple[Any, str]]:
    return [
        (None, "`harmful_dataset` is required"),
        ([], "`harmful_dataset` is empty"),
        (Dataset.from_list([{"input_ids": [1, 2]}]).select([]), "`harmful_dataset` is empty"),
        (_Stream(), "`harmful_dataset` must be a map-style data set"),
        (
            harmful_data[:3],
            "`harmful_dataset` has 3 example(s), fewer than one harmful batch: harmful_batch_size 4",
        ),
    ]


@pytest.mark.parametrize("case", range(5))
def test_trainer_rejects_bad_harmful_data_and_changes_nothing(
    case: int, fresh_model, make_args, task_data, harmful_data, *, collator, tmp_path
) -> None:
    dataset, message = _bad_harmful(harmful_data)[case]
    model = fresh_model()
    before = trainable_state(model)
    args = make_args("bad")
    with pytest.raises(ConfigError, match=re.escape(message)):
        PanaceaTrainer(
            model=model, args=args, train_dataset=task_data, harmful_dataset=dataset, data_collator=collator
        )
    assert all(torch.equal(p, before[n]) for n, p in trainable_state(model).items())
    assert not Path(args.output_dir).exists()


def test_trainer_rejects_parameters_that_match_nothing(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    model = fresh_model()
    args = make_args(perturb_parameters=["lora_A", r"^encoder\."])
    message = "`perturb_parameters` ['lora_A', '^encoder\\\\.'] match no trainable parameter; the trainable parameters"
    with pytest.raises(ConfigError, match=re.escape(message)):
        PanaceaTrainer(
            model=model,
            args=args,
            train_dataset=task_data,
            harmful_dataset=harmful_data,
            data_collator=collator,
        )
    frozen = fresh_model().requires_grad_(False)
    with pytest.raises(ConfigError, match="the model has no trainable parameter"):
        PanaceaTrainer(model=frozen, args=make_args(), train_dataset=task_data, harmful_dataset=harmful_data)


def test_trainer_rejects_other_arguments(fresh_model, harmful_data, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="`args` must be a PanaceaConfig, got TrainingArguments"):
        PanaceaTrainer(
            model=fresh_model(),
            args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"),
            harmful_dataset=harmful_data,
        )
