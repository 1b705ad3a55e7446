"""SeWACallback in a real transformers Trainer on tiny_causal_lm(), with and without PEFT LoRA."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import Trainer

from paperpack.core.errors import CheckpointNotFoundError, ConfigError
from paperpack.core.hf import default_corpus, training_args
from paperpack.core.testing.contracts import (
    assert_parameters_changed,
    assert_state_dicts_equal,
    snapshot_parameters,
)
from paperpack.core.testing.resume import ResumeCheck, check_trainer_resume
from paperpack.sewa import SeWACallback, SeWAConfig
from paperpack.sewa.callback import snapshot_state

FAST = {"iterations": 3, "mc_samples": 2}


@pytest.fixture(scope="module")
def lm_data(tiny_lm_dataset, tiny_collator):
    return tiny_lm_dataset, tiny_collator


def _train(model, lm_data, folder: Path, callback: SeWACallback, **overrides: Any) -> Trainer:
    dataset, collator = lm_data
    settings = {
        "max_steps": 8,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-3,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }
    trainer = Trainer(
        model=model,
        args=training_args(folder, **settings),
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[callback],
    )
    trainer.train()
    return trainer


def test_full_model_snapshots_select_and_load(tiny_lm, lm_data, tmp_path) -> None:
    model = copy.deepcopy(tiny_lm[0])
    callback = SeWACallback(SeWAConfig(k=2, **FAST), window=4, snapshot_every=2)
    _train(model, lm_data, tmp_path, callback)
    assert callback.store.steps == [2, 4, 6, 8]
    snapshots = callback.store.load()
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(set(snapshot) == names for snapshot in snapshots)
    assert all(value.device.type == "cpu" for value in snapshots[0].values())
    assert snapshots[0].keys() and not torch.equal(
        *(s["model.layers.0.mlp.up_proj.weight"] for s in snapshots[:2])
    )
    result = callback.result
    assert result is not None and len(result.indices) == 2 and callback.indices == result.indices
    expected = {key: torch.stack([snapshots[i][key] for i in result.indices]).mean(0) for key in names}
    assert_state_dicts_equal(snapshot_state(model), expected)
    assert len(result.loss_history) == 3


def test_lora_snapshots_hold_adapters_only(tiny_lm, lm_data, tmp_path) -> None:
    model = get_peft_model(
        copy.deepcopy(tiny_lm[0]), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    before = snapshot_parameters(model)
    callback = SeWACallback(
        SeWAConfig(k=2, **FAST), window=3, snapshot_every=2, offload_dir=tmp_path / "snaps"
    )
    _train(model, lm_data, tmp_path / "out", callback)
    files = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    assert files == [f"snapshot-00000000{s}.safetensors" for s in (4, 6, 8)]
    snapshots = callback.store.load()
    assert snapshots[0] and all("lora_" in key for key in snapshots[0])
    assert len(snapshots[0]) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (lora_A, lora_B)
    result = callback.result
    assert result is not None
    expected = {key: torch.stack([snapshots[i][key] for i in result.indices]).mean(0) for key in snapshots[0]}
    assert_state_dicts_equal(snapshot_state(model), expected)
    # Every adapter changed (the mean of trained snapshots), and no frozen base weight did.
    assert_parameters_changed(before, model)


def test_eval_selection_uses_the_eval_dataloader(tiny_lm, lm_data, tmp_path) -> None:
    train, collator = lm_data
    _, tokenizer = tiny_lm
    encoded = tokenizer(default_corpus(8, seed=11), truncation=True, max_length=24)
    evaluation = Dataset.from_dict(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    )
    eval_rows = {tuple(row) for row in evaluation["input_ids"]}
    assert not eval_rows & {tuple(row) for row in train["input_ids"]}  # the two sets are told apart
    model = copy.deepcopy(tiny_lm[0])
    # The search is the only forward pass in eval mode with gradients on: record what it sees.
    searched: list[torch.Tensor] = []

    def record(module, args, kwargs):
        if not module.training and torch.is_grad_enabled():
            searched.append(kwargs["input_ids"].cpu())

    model.register_forward_pre_hook(record, with_kwargs=True)
    callback = SeWACallback(SeWAConfig(k=1, selection_data="eval", **FAST), window=2, snapshot_every=1)
    trainer = Trainer(
        model=model,
        args=training_args(
            tmp_path,
            save_strategy="no",
            disable_tqdm=True,
            per_device_train_batch_size=4,
            eval_strategy="steps",
            eval_steps=4,
            max_steps=4,
            per_device_eval_batch_size=8,
        ),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.result is not None and len(callback.result.indices) == 1
    assert len(searched) == FAST["iterations"] * FAST["mc_samples"]
    pad = tokenizer.pad_token_id
    for batch in searched:
        assert len(batch) == 8  # per_device_eval_batch_size, not the train batch size
        for row in batch.tolist():
            while row and row[-1] == pad:
                row.pop()
            assert tuple(row) in eval_rows


def _resume_check(tiny_lm, lm_data, tmp_path: Path, **callback_kwargs: Any) -> ResumeCheck:
    """Uninterrupted, interrupted at step 3 and resumed runs of 6 steps with SeWACallback (K=4, k=2)."""
    dataset, collator = lm_data

    def make(settings: dict[str, Any], callbacks: list[Any]) -> Trainer:
        offload = {"offload_dir": Path(settings["output_dir"]) / "snapshots"} if callback_kwargs else {}
        sewa = SeWACallback(SeWAConfig(k=2, **FAST), window=4, snapshot_every=1, **offload)
        args = training_args(
            per_device_train_batch_size=4, learning_rate=5e-3, disable_tqdm=True, seed=0, **settings
        )
        return Trainer(
            model=copy.deepcopy(tiny_lm[0]),
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[sewa, *callbacks],
        )

    return check_trainer_resume(make, tmp_path, max_steps=6, interrupt_at=3)


def _sewa(trainer: Trainer) -> SeWACallback:
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, SeWACallback)]
    return callback


def test_resume_gives_the_same_snapshots_selection_and_weights(tiny_lm, lm_data, tmp_path) -> None:
    check = _resume_check(tiny_lm, lm_data, tmp_path)  # weights, optimizer, scheduler, callback state
    full, resumed = _sewa(check.full), _sewa(check.resumed)
    assert full.store.steps == resumed.store.steps == [3, 4, 5, 6]
    assert full.indices is not None and full.indices == resumed.indices


@pytest.mark.slow
def test_resume_with_offloaded_snapshots(tiny_lm, lm_data, tmp_path) -> None:
    check = _resume_check(tiny_lm, lm_data, tmp_path, offload=True)
    full, resumed = _sewa(check.full), _sewa(check.resumed)
    for a, b in zip(full.store.load(), resumed.store.load(), strict=True):
        assert_state_dicts_equal(a, b)
    assert full.indices == resumed.indices
    # A resumed run whose snapshot files are gone fails clearly.
    snapshots = tmp_path / "interrupted" / "snapshots"
    (snapshots / "snapshot-000000003.safetensors").unlink()
    fresh = SeWACallback(SeWAConfig(k=2, **FAST), window=4, snapshot_every=1, offload_dir=snapshots)
    with pytest.raises(CheckpointNotFoundError, match=r"snapshot of step 3 is missing"):
        fresh.load_state_dict(
            {"window": {"steps": [3], "offloaded": True}, "indices": None, "probabilities": None}
        )


def test_bad_arguments(tiny_lm, lm_data, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"`window` must be >= k=5"):
        SeWACallback(SeWAConfig(k=5), window=3)
    with pytest.raises(ConfigError, match=r"`snapshot_every` must be >= 1, got 0"):
        SeWACallback(window=5, snapshot_every=0)
    with pytest.raises(TypeError, match=r"`config` must be a SeWAConfig"):
        SeWACallback({"k": 2})
    callback = SeWACallback(SeWAConfig(k=3), window=5, snapshot_every=4)
    with pytest.raises(ConfigError, match=r"training runs 8 steps, so only 2 snapshots fit"):
        _train(copy.deepcopy(tiny_lm[0]), lm_data, tmp_path, callback)
    eval_callback = SeWACallback(SeWAConfig(k=1, selection_data="eval"), window=2)
    with pytest.raises(ConfigError, match=r"the Trainer never evaluates"):
        _train(copy.deepcopy(tiny_lm[0]), lm_data, tmp_path, eval_callback)
