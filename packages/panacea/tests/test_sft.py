"""PanaceaSFTTrainer: the same step as the reference through TRL's data handling and loss, SFT metrics kept apart."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from paperpack.core.errors import ConfigError
from paperpack.core.hf import training_args
from paperpack.panacea import PanaceaConfig, PanaceaSFTConfig, PanaceaSFTTrainer, global_norm
from paperpack.panacea._reference import reference_step

from .conftest import ARGS, HARMFUL_LINES, TASK_LINES
from .test_trainer import CaptureGradients, _assert_close


@pytest.fixture
def make_sft_args(tmp_path: Path) -> Callable[..., PanaceaSFTConfig]:
    def make(subdir: str = "sft", **overrides: Any) -> PanaceaSFTConfig:
        settings = {**ARGS, "max_length": 32, "bf16": False, "gradient_checkpointing": False, **overrides}
        return training_args(tmp_path / subdir, cls=PanaceaSFTConfig, **settings)

    return make


def _text(lines: list[str]) -> Dataset:
    return Dataset.from_list([{"text": line} for line in lines])


def test_config_has_both_parents_fields_and_sft_defaults(tmp_path: Path) -> None:
    args = PanaceaSFTConfig(
        str(tmp_path), panacea_rho=0.5, max_length=64, bf16=False, use_cpu=True, report_to="none"
    )
    assert isinstance(args, PanaceaConfig) and isinstance(args, SFTConfig)
    assert (args.panacea_rho, args.panacea_lambda, args.max_length) == (0.5, 1e-3, 64)
    assert args.learning_rate == SFTConfig(str(tmp_path), bf16=False, use_cpu=True).learning_rate
    with pytest.raises(ConfigError, match=re.escape("`panacea_lambda` must be >= 0, got -1")):
        PanaceaSFTConfig(str(tmp_path), panacea_lambda=-1, bf16=False, use_cpu=True, report_to="none")


@pytest.mark.parametrize(
    "settings",
    [
        {"gradient_checkpointing": False, "harmful_loss_clamp": None},
        # SFTConfig's default checkpointing, and pass 2 in halves with the clamp on (decided by a no-grad forward)
        {"gradient_checkpointing": True, "harmful_loss_clamp": 100.0},
    ],
    ids=["plain", "checkpointing-clamp-on"],
)
def test_step_equals_the_reference_on_tokenized_text(
    settings: dict[str, Any], fresh_model, make_sft_args, tiny_lm, *, collator
) -> None:
    model = fresh_model()
    tokenizer = tiny_lm[1]

    # What SFTTrainer makes of plain text: the tokens plus the end-of-sequence token.
    def tokenized(lines: list[str]) -> list[dict[str, list[int]]]:
        return [{"input_ids": tokenizer(line)["input_ids"] + [tokenizer.eos_token_id]} for line in lines]

    expected = reference_step(
        model,
        collator(tokenized(TASK_LINES[:4])),
        collator(tokenized(HARMFUL_LINES[:4])),
        rho=1.0,
        lam=0.5,
        clamp=None,
    )
    args = make_sft_args(
        max_steps=1,
        harmful_batch_size=4,
        max_grad_norm=0.0,
        final_perturbation="none",
        **settings,
    )
    capture = CaptureGradients()
    trainer = PanaceaSFTTrainer(
        model=model,
        args=args,
        train_dataset=_text(TASK_LINES[:4]),
        harmful_dataset=_text(HARMFUL_LINES[:4]),
        processing_class=tokenizer,
        callbacks=[capture],
    )
    capture.trainer = trainer  # type: ignore[assignment]
    trainer.train()
    assert trainer.perturbed_pass_pieces == 2
    _assert_close(capture.gradients[0], expected.gradient, rtol=1e-4, atol=1e-6)
    _assert_close(capture.epsilons[0], expected.epsilon, rtol=1e-4, atol=1e-7)


def test_sft_metrics_come_from_the_task_batches_only(fresh_model, make_sft_args, tiny_lm) -> None:
    """entropy, token accuracy and num_tokens are those of plain SFTTrainer on the same task batches."""
    tokenizer = tiny_lm[1]
    settings = {"max_steps": 2, "learning_rate": 0.0, "lr_scheduler_type": "constant"}
    panacea = PanaceaSFTTrainer(
        model=fresh_model(),
        args=make_sft_args("p", **settings),
        train_dataset=_text(TASK_LINES),
        harmful_dataset=_text(HARMFUL_LINES),
        processing_class=tokenizer,
    )
    panacea.train()
    plain_settings = {k: v for k, v in {**ARGS, **settings}.items() if not k.startswith("panacea")}
    plain_args = training_args(
        Path(panacea.args.output_dir).parent / "plain",
        cls=SFTConfig,
        max_length=32,
        bf16=False,
        gradient_checkpointing=False,
        **plain_settings,
    )
    plain = SFTTrainer(
        model=fresh_model(), args=plain_args, train_dataset=_text(TASK_LINES), processing_class=tokenizer
    )
    plain.train()
    mine = [e for e in panacea.state.log_history if "loss" in e]
    theirs = [e for e in plain.state.log_history if "loss" in e]
    for a, b in zip(mine, theirs, strict=True):
        for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
        assert "harmful_loss" in a and "perturbation_norm" in a


def test_peft_config_puts_epsilon_on_the_adapter(fresh_model, make_sft_args, tiny_lm) -> None:
    args = make_sft_args(max_steps=2, panacea_rho=0.2)
    capture = CaptureGradients()
    trainer = PanaceaSFTTrainer(
        model=fresh_model(),
        args=args,
        train_dataset=_text(TASK_LINES),
        harmful_dataset=_text(HARMFUL_LINES),
        processing_class=tiny_lm[1],
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        callbacks=[capture],
    )
    capture.trainer = trainer  # type: ignore[assignment]
    trainer.train()
    assert trainer.perturbed_pass_pieces == 1
    epsilon = capture.epsilons[-1]
    assert epsilon and all("lora_" in name for name in epsilon)
    assert global_norm(epsilon.values()) == pytest.approx(0.2, rel=1e-5)
    assert torch.is_tensor(next(iter(epsilon.values())))
