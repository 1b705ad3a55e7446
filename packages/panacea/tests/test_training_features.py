"""PanaceaTrainer with the Trainer's features: resume, gradient accumulation, PEFT, evaluation, another architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2ForCausalLM

from paperpack.core.testing.contracts import assert_state_dicts_equal, assert_states_equal
from paperpack.core.testing.resume import StopAtStep, check_trainer_resume
from paperpack.panacea import PanaceaTrainer, global_norm

from .conftest import trainable_state
from .test_trainer import _assert_close, _train


def _trainer(
    model: torch.nn.Module, args: Any, task: Any, harmful: Any, collator: Any, **kwargs: Any
) -> PanaceaTrainer:
    return PanaceaTrainer(
        model=model, args=args, train_dataset=task, harmful_dataset=harmful, data_collator=collator, **kwargs
    )


def test_resume_reproduces_the_uninterrupted_run(
    fresh_model, make_args, task_data, tmp_path: Path, *, harmful_data, collator
) -> None:
    """Interrupted after the checkpoint at step 2 and resumed: the same weights, optimizer, scheduler and
    Panacea state (its callback: the last ε and the running sum of ``"mean"``) as one run of 4 steps."""

    def make(settings: dict[str, Any], callbacks: list[Any]) -> PanaceaTrainer:
        args = make_args(  # an absolute output_dir replaces make_args' folder
            settings.pop("output_dir"),
            per_device_train_batch_size=2,
            final_perturbation="mean",
            lr_scheduler_type="linear",
            **settings,
        )
        return _trainer(fresh_model(), args, task_data, harmful_data, collator, callbacks=callbacks)

    check = check_trainer_resume(make, tmp_path / "runs", max_steps=4, interrupt_at=2)
    assert (check.checkpoint / "paperpack_callbacks" / "panacea.safetensors").is_file()
    assert check.resumed.applied_perturbation is not None


def test_resume_from_the_last_checkpoint_adds_the_same_final_epsilon(
    fresh_model, make_args, task_data, *, harmful_data, collator
) -> None:
    """Interrupted right after the last step's checkpoint (before the final ε is added; a case
    check_trainer_resume does not cover) and resumed: no step is left, and the final ε lands as in one run."""
    common = {
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "lr_scheduler_type": "linear",
        "save_steps": 4,
    }
    full = fresh_model()
    full_trainer = _trainer(full, make_args("full", **common), task_data, harmful_data, collator)
    full_trainer.train()

    args = make_args("cut", save_strategy="steps", **common)
    _trainer(fresh_model(), args, task_data, harmful_data, collator, callbacks=[StopAtStep(4)]).train()
    checkpoint = Path(args.output_dir) / "checkpoint-4"
    resumed = fresh_model()
    trainer = _trainer(resumed, args, task_data, harmful_data, collator)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 4
    assert_state_dicts_equal(resumed.state_dict(), full.state_dict())
    assert_states_equal(trainer.panacea_state(), full_trainer.panacea_state())


@pytest.mark.parametrize(
    "pass_2",
    [
        {"harmful_loss_clamp": None},  # pass 2 in halves (the default here), nothing to decide first
        {"harmful_loss_clamp": 100.0, "perturbed_pass_pieces": 1},  # the first micro-batch run without grad
        {"harmful_loss_clamp": 100.0, "perturbed_pass_pieces": 2},
    ],
    ids=["no-clamp", "clamp-on-one-piece", "clamp-on-halves"],
)
def test_gradient_accumulation_equals_the_doubled_batch(
    pass_2: dict[str, Any], fresh_model, make_args, task_data, *, harmful_data, collator
) -> None:
    """2 micro-batches of 2 (and 2 harmful micro-batches of 2) give the step of one batch of 4 (and 4).

    Pass 2 runs once per optimizer step, after the second task micro-batch, on both harmful micro-batches.
    """
    # SGD: Adam's first steps turn rounding-level differences of near-zero gradients into ±η moves.
    common = {"max_steps": 3, "max_grad_norm": 0.0, "optim": "sgd", "learning_rate": 0.1, **pass_2}
    big_model = fresh_model()
    _, big = _train(
        big_model,
        make_args("big", per_device_train_batch_size=4, **common),
        task_data,
        harmful_data,
        collator,
    )
    accumulated_model = fresh_model()
    args = make_args("acc", per_device_train_batch_size=2, gradient_accumulation_steps=2, **common)
    _, accumulated = _train(accumulated_model, args, task_data, harmful_data, collator)
    assert len(big.gradients) == len(accumulated.gradients) == 3
    for mine, theirs in zip(accumulated.gradients, big.gradients, strict=True):
        _assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    for mine, theirs in zip(accumulated.epsilons, big.epsilons, strict=True):
        _assert_close(mine, theirs, rtol=1e-4, atol=1e-7)
    assert_state_dicts_equal(accumulated_model.state_dict(), big_model.state_dict(), atol=1e-6, rtol=1e-5)


def test_pass_2_follows_the_last_micro_batch_of_a_short_step(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    """8 task rows, micro-batches of 2, accumulation 3: the epoch's second step has 1 micro-batch, not 3."""
    args = make_args(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=3)
    trainer = _trainer(fresh_model(), args, task_data, harmful_data, collator)
    events: list[tuple[str, int]] = []
    step, perturbed_pass = trainer.training_step, trainer._perturbed_pass

    def record_step(*args: Any, **kwargs: Any) -> torch.Tensor:
        events.append(("task", trainer.state.global_step))
        return step(*args, **kwargs)

    def record_pass(*args: Any, **kwargs: Any) -> None:
        events.append(("pass 2", trainer.state.global_step))
        perturbed_pass(*args, **kwargs)

    trainer.training_step = record_step  # type: ignore[method-assign]
    trainer._perturbed_pass = record_pass  # type: ignore[method-assign]
    trainer.train()
    assert events == [("task", 0), ("task", 0), ("task", 0), ("pass 2", 0), ("task", 1), ("pass 2", 1)]
    assert all("harmful_loss_perturbed" in entry for entry in trainer.state.log_history[:2])


def test_a_second_train_call_runs_the_whole_step_again(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    """``train()`` twice on one trainer (global_step starts at 0 again): each step still runs passes 1 and 2."""
    trainer = _trainer(fresh_model(), make_args(max_steps=1), task_data, harmful_data, collator)
    trainer.train()
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 1 and "harmful_loss_perturbed" in logged[0]
    assert trainer._step is None  # pass 2 ran: nothing of the step is left


def test_peft_lora_perturbs_the_adapter_weights_only(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    base = fresh_model()
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    trainer, capture = _train(
        model, make_args(max_steps=3, panacea_rho=0.1), task_data, harmful_data, collator
    )
    adapters = {name for name, p in model.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in name for name in adapters)
    assert trainer.perturbed_pass_pieces == 1  # the default: nothing to gain from halves with LoRA
    for epsilon in capture.epsilons:
        assert set(epsilon) == adapters
        assert global_norm(epsilon.values()) == pytest.approx(0.1, rel=1e-5)
    for name, param in model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, frozen[name.replace(".base_layer", "")]), name
    assert trainer.applied_perturbation is not None and set(trainer.applied_perturbation) == adapters


def test_evaluation_during_training_sees_the_unperturbed_weights(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    args = make_args(
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=8,
        final_perturbation="none",
    )
    model = fresh_model()
    trainer = _trainer(model, args, task_data, harmful_data, collator, eval_dataset=task_data)
    trainer.train()
    logged = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert logged == [pytest.approx(trainer.evaluate()["eval_loss"], rel=1e-6)]


def test_qwen2_with_tied_embeddings(make_args, task_data, harmful_data, collator, tiny_qwen2_dir) -> None:
    model = Qwen2ForCausalLM.from_pretrained(tiny_qwen2_dir)
    before = trainable_state(model)
    trainer, capture = _train(model, make_args(max_steps=2), task_data, harmful_data, collator)
    assert trainer.perturbed_pass_pieces == 2  # the default for full fine-tuning
    assert "lm_head.weight" not in capture.epsilons[-1]  # the tied head is the embedding, perturbed once
    assert "model.embed_tokens.weight" in capture.epsilons[-1]
    assert global_norm(capture.epsilons[-1].values()) == pytest.approx(1.0, rel=1e-6)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert any(not torch.equal(before[n], p) for n, p in trainable_state(model).items())
    assert trainer.applied_perturbation is not None
