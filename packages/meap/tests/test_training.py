"""A real transformers Trainer and a real trl SFTTrainer with the MEAP collators on tiny_causal_lm()."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from paperpack.core.hf import default_corpus, training_args
from paperpack.core.testing.contracts import assert_parameters_changed, snapshot_parameters
from paperpack.core.testing.resume import check_trainer_resume
from paperpack.meap import MEAPCollator, MEAPConfig, MEAPEpochCallback, MEAPSFTCollator


class Recording:
    """Wraps a collator and keeps every batch it returns."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.batches: list[dict[str, Any]] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        self.batches.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return batch


def clean_loss(model: Any, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss.item()
    model.train()
    return float(loss)


def pretraining_blocks(tokenizer: Any, block: int = 64) -> list[list[int]]:
    ids: list[int] = []
    for line in default_corpus(300, seed=1):
        ids += tokenizer(line)["input_ids"] + [tokenizer.eos_token_id]
    return [ids[i : i + block] for i in range(0, len(ids) - block, block)]


def sft_rows(count: int = 24) -> list[dict[str, str]]:
    lines = default_corpus(2 * count, seed=2)
    return [{"prompt": lines[2 * i], "completion": " " + lines[2 * i + 1]} for i in range(count)]


@pytest.mark.slow
def test_trainer_steps_decrease_the_loss(meap_lm: tuple[Any, Any, int], tmp_path: Path) -> None:
    model, tokenizer, mask_id = copy.deepcopy(meap_lm[0]), meap_lm[1], meap_lm[2]
    blocks = pretraining_blocks(tokenizer)
    held_out = {key: torch.tensor(blocks[-4:]) for key in ("input_ids", "labels")}
    collator = Recording(MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.15)))
    before = snapshot_parameters(model)
    loss_before = clean_loss(model, held_out)
    args = training_args(
        tmp_path,
        max_steps=8,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": blocks[:-4]}),
        data_collator=collator,
    )
    trainer.train()
    assert clean_loss(model, held_out) < loss_before - 0.3
    assert all("loss" in entry for entry in trainer.state.log_history[:-1])
    assert_parameters_changed(before, model)
    special = torch.tensor(tokenizer.all_special_ids)
    for batch in collator.batches:
        eligible = (~torch.isin(batch["labels"], special))[:, :-2].sum(dim=1)
        assert torch.equal((batch["input_ids"] == mask_id).sum(dim=1), eligible * 15 // 100)


@pytest.mark.slow
def test_masks_change_every_epoch_and_resume_reproduces_them(
    meap_lm: tuple[Any, Any, int], tmp_path: Path
) -> None:
    """Issue 14: at one example per batch, every example came back in every epoch with the same masks.

    With ``MEAPEpochCallback`` the masks of an example differ between epochs, and a run resumed from a
    checkpoint in the middle of the second epoch sees the uninterrupted run's masked batches and ends with
    its weights (the collator keeps no random state; the epoch comes from the Trainer's state).
    """
    tokenizer, mask_id = meap_lm[1], meap_lm[2]
    data = Dataset.from_dict({"input_ids": pretraining_blocks(tokenizer)[:4]})

    def make_trainer(settings: dict[str, Any], callbacks: list[Any]) -> Trainer:
        meap = MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.3, seed=7))
        settings = dict(settings)
        args = training_args(
            settings.pop("output_dir"),
            per_device_train_batch_size=1,
            learning_rate=3e-3,
            seed=0,
            data_seed=0,
            **settings,
        )
        return Trainer(
            model=copy.deepcopy(meap_lm[0]),
            args=args,
            train_dataset=data,
            data_collator=Recording(meap),
            callbacks=[MEAPEpochCallback(meap), *callbacks],
        )

    # 12 steps = 4 examples x 3 epochs; interrupted in the middle of the second epoch.
    check = check_trainer_resume(make_trainer, tmp_path, max_steps=12, interrupt_at=6)
    full_batches = check.full.data_collator.batches
    assert len(full_batches) == 12
    masks: dict[tuple[int, ...], list[tuple[bool, ...]]] = {}
    for batch in full_batches:
        masks.setdefault(tuple(batch["labels"][0].tolist()), []).append(
            tuple((batch["input_ids"][0] == mask_id).tolist())
        )
    assert len(masks) == 4
    assert all(len(set(per_epoch)) == 3 for per_epoch in masks.values()), "an example kept its masks"
    # Steps 7-12 of the uninterrupted run and the six steps of the resumed one: the same masked inputs.
    resumed_batches = check.resumed.data_collator.batches
    assert len(resumed_batches) == 6
    for ours, theirs in zip(resumed_batches, full_batches[-6:], strict=True):
        assert torch.equal(ours["input_ids"], theirs["input_ids"])


@pytest.mark.slow
def test_sft_trainer_steps_decrease_the_loss(meap_lm: tuple[Any, Any, int], tmp_path: Path) -> None:
    model, tokenizer, mask_id = copy.deepcopy(meap_lm[0]), meap_lm[1], meap_lm[2]
    config = MEAPConfig(sft_mask_ratio=0.2, min_answer_tokens=4)
    collator = Recording(MEAPSFTCollator(tokenizer, config))
    rows = sft_rows()
    args = training_args(
        tmp_path,
        cls=SFTConfig,
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        max_length=128,
    )
    before = snapshot_parameters(model)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=collator,
    )
    held_out = Recording(MEAPSFTCollator(tokenizer, MEAPConfig(sft_mask_ratio=0.0)))(
        [trainer.train_dataset[i] for i in range(8)]
    )
    loss_before = clean_loss(trainer.model, held_out)
    trainer.train()
    assert clean_loss(trainer.model, held_out) < loss_before - 0.3
    assert_parameters_changed(before, model)
    for batch in collator.batches:
        rows_in_batch = batch["input_ids"].shape[0]
        assert rows_in_batch > 4  # masked copies joined the batch
        copies = batch["input_ids"][4:] == mask_id
        assert copies.any(dim=1).all() and not (batch["input_ids"][:4] == mask_id).any()
        assert ((batch["labels"][4:] != -100) == copies).all()


@pytest.mark.slow
def test_assistant_only_loss_masks_only_assistant_tokens(
    meap_lm: tuple[Any, Any, int], tmp_path: Path
) -> None:
    model, tokenizer, mask_id = copy.deepcopy(meap_lm[0]), meap_lm[1], meap_lm[2]
    lines = default_corpus(24, seed=3)
    conversations = [
        {
            "messages": [
                {"role": "user", "content": lines[2 * i]},
                {"role": "assistant", "content": lines[2 * i + 1]},
            ]
        }
        for i in range(12)
    ]
    collator = Recording(MEAPSFTCollator(tokenizer, MEAPConfig(sft_mask_ratio=0.3, min_answer_tokens=3)))
    args = training_args(
        tmp_path,
        cls=SFTConfig,
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="no",
        assistant_only_loss=True,
        max_length=128,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(conversations),
        processing_class=tokenizer,
        data_collator=collator,
    )
    trainer.train()
    assistant = tokenizer.convert_tokens_to_ids("<|assistant|>")
    for batch in collator.batches:
        ids, labels = batch["input_ids"], batch["labels"]
        copies = ids[4:]
        assert copies.shape[0] > 0
        for row in copies:
            masked = (row == mask_id).nonzero().squeeze(1)
            start = int((row == assistant).nonzero()[-1]) + 2  # the answer starts after "<|assistant|>\n"
            assert masked.numel() > 0 and int(masked.min()) >= start
        assert ((labels[4:] != -100) == (ids[4:] == mask_id)).all()


@pytest.mark.slow
def test_gradient_accumulation_normalises_by_label_tokens(
    meap_lm: tuple[Any, Any, int], tmp_path: Path
) -> None:
    model, tokenizer, _ = copy.deepcopy(meap_lm[0]), meap_lm[1], meap_lm[2]
    initial = copy.deepcopy(model)
    collator = Recording(MEAPSFTCollator(tokenizer, MEAPConfig(sft_mask_ratio=0.2, min_answer_tokens=12)))
    args = training_args(
        tmp_path,
        cls=SFTConfig,
        max_steps=1,
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        max_length=128,
        shuffle_dataset=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(sft_rows(6)),
        processing_class=tokenizer,
        data_collator=collator,
    )
    trainer.train()
    total, count = 0.0, 0
    initial.eval()
    with torch.no_grad():
        for batch in collator.batches:
            logits = initial(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shifted = batch["labels"][:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), reduction="sum"
            ).item()
            count += int((shifted != -100).sum())
    counts = [int((batch["labels"][:, 1:] != -100).sum()) for batch in collator.batches]
    assert len(counts) == 2 and counts[0] != counts[1]  # the micro-batches carry different label counts
    assert trainer.state.log_history[0]["loss"] == pytest.approx(total / count, rel=1e-3)


@pytest.mark.slow
def test_packed_padding_free_sft(meap_lm: tuple[Any, Any, int], tmp_path: Path) -> None:
    model, tokenizer, mask_id = copy.deepcopy(meap_lm[0]), meap_lm[1], meap_lm[2]
    args = training_args(
        tmp_path,
        cls=SFTConfig,
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        save_strategy="no",
        packing=True,
        max_length=128,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(sft_rows(16)), processing_class=tokenizer
    )
    # SFTTrainer refuses a custom collator when padding-free, so it is set after construction (see the docs).
    collator = Recording(
        MEAPSFTCollator(tokenizer, MEAPConfig(min_answer_tokens=4, sft_mask_ratio=0.3), padding_free=True)
    )
    trainer.data_collator = collator
    trainer.train()
    for batch in collator.batches:
        assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch and "attention_mask" not in batch
        masked = batch["input_ids"][0] == mask_id
        assert masked.any()
        # Every masked position sits in a masked copy: a sequence whose labels are -100 except at the masks.
        starts = [*(batch["position_ids"][0] == 0).nonzero().squeeze(1).tolist(), masked.numel()]
        for start, end in itertools.pairwise(starts):
            segment = slice(start, end)
            if masked[segment].any():
                labels = batch["labels"][0, segment]
                assert ((labels != -100) == masked[segment]).all()
