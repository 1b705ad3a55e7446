"""The Trainer and SFTTrainer route: preheat on the trainer's own batches and loss, then train; resume."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from paperpack.core.errors import ConfigError
from paperpack.core.hf import training_args
from paperpack.core.testing.contracts import assert_parameters_changed, snapshot_parameters
from paperpack.core.testing.resume import check_trainer_resume
from paperpack.hrp_lora import HRPConfig, hrp_initialize_trainer
from paperpack.hrp_lora.adapters import lora_layers

LORA = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"])
ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-3,
    "max_steps": 3,
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 0,
    "disable_tqdm": True,
}


class _Recorder:
    """Wraps ``trainer.compute_loss`` to record the inputs of each call."""

    def __init__(self, trainer: Trainer) -> None:
        self.inputs: list[dict[str, torch.Tensor]] = []
        self._compute = trainer.compute_loss
        trainer.compute_loss = self  # type: ignore[method-assign]

    def __call__(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.inputs.append({k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return self._compute(model, inputs, *args, **kwargs)


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_trainer_preheats_on_its_batches_with_accumulation_then_trains(
    fresh_model, tiny_collator, tiny_lm_dataset, tmp_path: Path
) -> None:
    base = fresh_model()
    probe = torch.tensor([tiny_lm_dataset[0]["input_ids"]])
    expected = _logits(copy.deepcopy(base), probe)
    trainer = Trainer(
        model=get_peft_model(base, copy.deepcopy(LORA)),
        args=training_args(tmp_path, gradient_accumulation_steps=2, **ARGS),
        train_dataset=tiny_lm_dataset,
        data_collator=tiny_collator,
    )
    recorder = _Recorder(trainer)
    model = hrp_initialize_trainer(trainer, HRPConfig(preheat_steps=3, preheat_lr=1e-3))
    assert model is trainer.model
    assert len(recorder.inputs) == 6  # 3 preheat steps x 2 accumulated micro-batches
    for inputs in recorder.inputs:  # the trainer's collator made them: padded, labels -100 on padding
        assert inputs["input_ids"].shape[0] == 4 and set(inputs) >= {"input_ids", "labels", "attention_mask"}
        assert torch.equal(inputs["labels"] == -100, inputs["attention_mask"] == 0)
    assert torch.equal(_logits(model, probe), expected)
    before = snapshot_parameters(model)
    recorder.inputs.clear()
    trainer.train()
    assert len(recorder.inputs) == 6 and trainer.state.global_step == 3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3
    assert_parameters_changed(before, model)  # every LoRA factor trained, nothing frozen moved


def test_sft_trainer_preheats_on_completion_only_batches(
    fresh_model, tiny_lm, tiny_prompt_completion_dataset, tmp_path: Path
) -> None:
    model = fresh_model()
    trainer = SFTTrainer(
        model=model,
        args=training_args(tmp_path, cls=SFTConfig, max_length=32, **ARGS),
        train_dataset=tiny_prompt_completion_dataset,
        processing_class=tiny_lm[1],
        peft_config=copy.deepcopy(LORA),
    )
    metrics = copy.deepcopy(trainer._metrics)
    recorder = _Recorder(trainer)
    peft_model = hrp_initialize_trainer(trainer, HRPConfig(preheat_steps=2, preheat_lr=1e-3))
    assert len(recorder.inputs) == 2
    for inputs in recorder.inputs:  # prompt tokens are masked out of the loss: not only padding is -100
        real = inputs["attention_mask"].bool()
        assert bool(((inputs["labels"] == -100) & real).any())
    assert trainer._metrics == metrics, "the preheat's metrics leaked into the training logs"
    for layer in lora_layers(peft_model, "default").values():
        assert not layer.lora_B["default"].weight.any()
    trainer.train()
    assert trainer.state.global_step == 3
    assert any(layer.lora_B["default"].weight.any() for layer in lora_layers(peft_model, "default").values())


def test_resumed_run_equals_the_uninterrupted_one(
    fresh_model, tiny_collator, tiny_lm_dataset, tmp_path: Path
) -> None:
    """The script calls hrp_initialize_trainer before train() on every start; the checkpoint then wins."""

    def make_trainer(settings: dict[str, Any], callbacks: list[Any]) -> Trainer:
        trainer = Trainer(
            model=get_peft_model(fresh_model(), copy.deepcopy(LORA)),
            args=training_args(**{**ARGS, **settings}),
            train_dataset=tiny_lm_dataset,
            data_collator=tiny_collator,
            callbacks=callbacks,
        )
        hrp_initialize_trainer(trainer, HRPConfig(preheat_steps=2, preheat_lr=1e-3))
        return trainer

    check_trainer_resume(make_trainer, tmp_path, max_steps=4, interrupt_at=2)


def test_bad_trainers_are_refused(fresh_model, tiny_collator, tiny_lm_dataset, tmp_path: Path) -> None:
    collator = tiny_collator
    plain = Trainer(
        model=fresh_model(),
        args=training_args(tmp_path / "a", **ARGS),
        train_dataset=tiny_lm_dataset,
        data_collator=collator,
    )
    with pytest.raises(
        ConfigError,
        match="`trainer.model` must be a peft.PeftModel holding the LoRA to initialize, got LlamaForCausalLM",
    ):
        hrp_initialize_trainer(plain, HRPConfig())
    with pytest.raises(ConfigError, match="`trainer` must be a transformers.Trainer"):
        hrp_initialize_trainer(object(), HRPConfig())  # type: ignore[arg-type]
    trainer = Trainer(
        model=get_peft_model(fresh_model(), copy.deepcopy(LORA)),
        args=training_args(tmp_path / "b", **{**ARGS, "max_steps": 1}),
        train_dataset=tiny_lm_dataset,
        data_collator=collator,
    )
    with pytest.raises(ConfigError, match="has no adapter 'other'; it has default"):
        hrp_initialize_trainer(trainer, HRPConfig(), adapter_name="other")
    with pytest.raises(ConfigError, match="`config` must be an HRPConfig"):
        hrp_initialize_trainer(trainer, {"preheat_steps": 1})  # type: ignore[arg-type]
    trainer.train()
    with pytest.raises(ConfigError, match=r"call hrp_initialize_trainer before trainer.train\(\)"):
        hrp_initialize_trainer(trainer, HRPConfig())
