"""The Trainer and SFTTrainer route: preheat on the trainer's own batches and loss, then train; resume."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForLanguageModeling, Trainer
from trl import SFTConfig, SFTTrainer

from paperpack.core.errors import ConfigError
from paperpack.core.hf import default_corpus, training_args
from paperpack.core.testing.contracts import assert_state_dicts_equal
from paperpack.core.testing.resume import StopAtStep
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


@pytest.fixture(scope="module")
def lm_dataset(tiny_lm) -> Dataset:
    encoded = tiny_lm[1](default_corpus(num_lines=32, seed=1), truncation=True, max_length=24)
    return Dataset.from_dict({"input_ids": encoded["input_ids"]})


@pytest.fixture(scope="module")
def prompt_completion() -> Dataset:
    lines = default_corpus(num_lines=32, seed=2)
    return Dataset.from_list(
        [{"prompt": line[: len(line) // 2], "completion": line[len(line) // 2 :]} for line in lines]
    )


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


def _lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_trainer_preheats_on_its_batches_with_accumulation_then_trains(
    fresh_model, tiny_lm, lm_dataset, tmp_path: Path
) -> None:
    base = fresh_model()
    probe = torch.tensor([lm_dataset[0]["input_ids"]])
    expected = _logits(copy.deepcopy(base), probe)
    trainer = Trainer(
        model=get_peft_model(base, copy.deepcopy(LORA)),
        args=training_args(tmp_path, gradient_accumulation_steps=2, **ARGS),
        train_dataset=lm_dataset,
        data_collator=DataCollatorForLanguageModeling(tiny_lm[1], mlm=False),
    )
    recorder = _Recorder(trainer)
    model = hrp_initialize_trainer(trainer, HRPConfig(preheat_steps=3, preheat_lr=1e-3))
    assert model is trainer.model
    assert len(recorder.inputs) == 6  # 3 preheat steps x 2 accumulated micro-batches
    for inputs in recorder.inputs:  # the trainer's collator made them: padded, labels -100 on padding
        assert inputs["input_ids"].shape[0] == 4 and set(inputs) >= {"input_ids", "labels", "attention_mask"}
        assert torch.equal(inputs["labels"] == -100, inputs["attention_mask"] == 0)
    assert torch.equal(_logits(model, probe), expected)
    before = _lora_state(model)
    recorder.inputs.clear()
    trainer.train()
    assert len(recorder.inputs) == 6 and trainer.state.global_step == 3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3
    changed = {n for n, p in model.named_parameters() if "lora_" in n and not torch.equal(p, before[n])}
    assert changed == set(before), sorted(set(before) - changed)


def test_sft_trainer_preheats_on_completion_only_batches(
    fresh_model, tiny_lm, prompt_completion, tmp_path: Path
) -> None:
    model = fresh_model()
    trainer = SFTTrainer(
        model=model,
        args=training_args(tmp_path, cls=SFTConfig, max_length=32, **ARGS),
        train_dataset=prompt_completion,
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


def test_resumed_run_equals_the_uninterrupted_one(fresh_model, tiny_lm, lm_dataset, tmp_path: Path) -> None:
    collator = DataCollatorForLanguageModeling(tiny_lm[1], mlm=False)
    config = HRPConfig(preheat_steps=2, preheat_lr=1e-3)

    def run(folder: str, stop: int | None = None, resume: str | None = None) -> torch.nn.Module:
        args = training_args(
            tmp_path / folder, **{**ARGS, "max_steps": 4, "save_strategy": "steps", "save_steps": 2}
        )
        trainer = Trainer(
            model=get_peft_model(fresh_model(), copy.deepcopy(LORA)),
            args=args,
            train_dataset=lm_dataset,
            data_collator=collator,
            callbacks=[StopAtStep(stop)] if stop else [],
        )
        hrp_initialize_trainer(trainer, config)
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    full = run("full")
    run("cut", stop=2)
    resumed = run("cut", resume=str(tmp_path / "cut" / "checkpoint-2"))
    assert_state_dicts_equal(_lora_state(resumed), _lora_state(full))


def test_bad_trainers_are_refused(fresh_model, tiny_lm, lm_dataset, tmp_path: Path) -> None:
    collator = DataCollatorForLanguageModeling(tiny_lm[1], mlm=False)
    plain = Trainer(
        model=fresh_model(),
        args=training_args(tmp_path / "a", **ARGS),
        train_dataset=lm_dataset,
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
        train_dataset=lm_dataset,
        data_collator=collator,
    )
    with pytest.raises(ConfigError, match="has no adapter 'other'; it has default"):
        hrp_initialize_trainer(trainer, HRPConfig(), adapter_name="other")
    with pytest.raises(ConfigError, match="`config` must be an HRPConfig"):
        hrp_initialize_trainer(trainer, {"preheat_steps": 1})  # type: ignore[arg-type]
    trainer.train()
    with pytest.raises(ConfigError, match=r"call hrp_initialize_trainer before trainer.train\(\)"):
        hrp_initialize_trainer(trainer, HRPConfig())
