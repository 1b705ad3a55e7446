"""SeWACallback in a real transformers Trainer on tiny_causal_lm(), with and without PEFT LoRA."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForLanguageModeling, Trainer

from paperpack.core.errors import CheckpointNotFoundError, ConfigError
from paperpack.core.hf import default_corpus, training_args
from paperpack.core.testing.contracts import assert_state_dicts_equal
from paperpack.core.testing.resume import check_callback_resume
from paperpack.sewa import SeWACallback, SeWAConfig
from paperpack.sewa.callback import trainable_state

FAST = {"iterations": 3, "mc_samples": 2}


@pytest.fixture(scope="module")
def lm_data(tiny_lm):
    _, tokenizer = tiny_lm
    encoded = tokenizer(default_corpus(48, seed=3), truncation=True, max_length=24)
    dataset = Dataset.from_dict(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    )
    return dataset, DataCollatorForLanguageModeling(tokenizer, mlm=False)


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
    assert_state_dicts_equal(trainable_state(model), expected)
    assert len(result.loss_history) == 3


def test_lora_snapshots_hold_adapters_only(tiny_lm, lm_data, tmp_path) -> None:
    base = copy.deepcopy(tiny_lm[0])
    frozen_before = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
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
    assert_state_dicts_equal(trainable_state(model), expected)
    merged_base = model.get_base_model().state_dict()
    for key, value in frozen_before.items():
        assert torch.equal(
            merged_base[
                key.replace("q_proj.weight", "q_proj.base_layer.weight").replace(
                    "v_proj.weight", "v_proj.base_layer.weight"
                )
            ],
            value,
        ), key


def test_eval_selection_uses_the_eval_dataloader(tiny_lm, lm_data, tmp_path) -> None:
    dataset, _ = lm_data
    model = copy.deepcopy(tiny_lm[0])
    callback = SeWACallback(SeWAConfig(k=1, selection_data="eval", **FAST), window=2, snapshot_every=1)
    trainer_settings = {
        "eval_strategy": "steps",
        "eval_steps": 4,
        "max_steps": 4,
        "per_device_eval_batch_size": 8,
    }
    dataset_eval = dataset.select(range(8))
    d, collator = lm_data
    trainer = Trainer(
        model=model,
        args=training_args(
            tmp_path, save_strategy="no", disable_tqdm=True, per_device_train_batch_size=4, **trainer_settings
        ),
        train_dataset=d,
        eval_dataset=dataset_eval,
        data_collator=collator,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.result is not None and len(callback.result.indices) == 1


def test_resume_gives_the_same_snapshots_and_selection(tiny_lm, lm_data, tmp_path) -> None:
    dataset, collator = lm_data
    config = SeWAConfig(k=2, **FAST)
    full, resumed = check_callback_resume(
        lambda: SeWACallback(config, window=4, snapshot_every=1),
        model_factory=lambda: copy.deepcopy(tiny_lm[0]),
        train_dataset=dataset,
        data_collator=collator,
        tmp_path=tmp_path,
        max_steps=6,
        interrupt_at=3,
    )
    assert isinstance(full, SeWACallback) and isinstance(resumed, SeWACallback)
    assert full.store.steps == resumed.store.steps == [3, 4, 5, 6]
    assert full.indices is not None and full.indices == resumed.indices


@pytest.mark.slow
def test_resume_with_offloaded_snapshots(tiny_lm, lm_data, tmp_path) -> None:
    dataset, collator = lm_data
    config = SeWAConfig(k=2, **FAST)
    folders = iter([tmp_path / "snaps-full", tmp_path / "snaps-run", tmp_path / "snaps-run"])
    full, resumed = check_callback_resume(
        lambda: SeWACallback(config, window=4, snapshot_every=1, offload_dir=next(folders)),
        model_factory=lambda: copy.deepcopy(tiny_lm[0]),
        train_dataset=dataset,
        data_collator=collator,
        tmp_path=tmp_path / "runs",
        max_steps=6,
        interrupt_at=3,
    )
    assert isinstance(full, SeWACallback) and isinstance(resumed, SeWACallback)
    for a, b in zip(full.store.load(), resumed.store.load(), strict=True):
        assert_state_dicts_equal(a, b)
    assert full.indices == resumed.indices
    # A resumed run whose snapshot files are gone fails clearly.
    (tmp_path / "snaps-run" / "snapshot-000000003.safetensors").unlink()
    fresh = SeWACallback(config, window=4, snapshot_every=1, offload_dir=tmp_path / "snaps-run")
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
