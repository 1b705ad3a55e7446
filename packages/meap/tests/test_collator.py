"""MEAPCollator (pretraining) and MEAPSFTCollator on hand-made batches."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from paperpack.core.errors import ConfigError
from paperpack.meap import MEAPCollator, MEAPConfig, MEAPSFTCollator


def examples(lengths: list[int], start: int = 10) -> list[dict[str, list[int]]]:
    return [{"input_ids": [start + (i * 7 + j) % 400 for j in range(n)]} for i, n in enumerate(lengths)]


def sft_example(prompt: int, answer: int, start: int = 10) -> dict[str, list[int]]:
    ids = [start + j % 400 for j in range(prompt + answer)]
    return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}


# Pretraining -------------------------------------------------------------------------------------------


def test_labels_are_the_unmasked_inputs_and_counts_are_exact(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    rows = examples([41, 21, 101])
    rows[1]["input_ids"][5] = tokenizer.eos_token_id  # a special token inside a sequence
    batch = MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.15))(rows)
    reference = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    assert torch.equal(batch["labels"], reference["labels"])
    assert torch.equal(batch["attention_mask"], reference["attention_mask"])
    masked = batch["input_ids"] == mask_id
    assert masked.sum(dim=1).tolist() == [6, 2, 15]  # ⌊0.15·40⌋, ⌊0.15·19⌋ (EOS protected), ⌊0.15·100⌋
    assert torch.equal(batch["input_ids"][~masked], reference["input_ids"][~masked])
    assert not masked[1, 5] and not masked[0, 40] and not masked[1, 20] and not masked[2, 100]
    assert not masked[reference["attention_mask"] == 0].any()


def test_ratio_zero_gives_exactly_the_ntp_batch(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, _ = meap_lm
    rows = examples([30, 12, 25])
    batch = MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.0))(rows)
    reference = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    assert batch.keys() == reference.keys()
    assert all(torch.equal(batch[key], reference[key]) for key in batch)


def test_inputs_are_not_modified(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, _ = meap_lm
    rows = examples([30, 12])
    before = copy.deepcopy(rows)
    MEAPCollator(tokenizer)(rows)
    sft_rows = [sft_example(5, 60)]
    sft_before = copy.deepcopy(sft_rows)
    MEAPSFTCollator(tokenizer)(sft_rows)
    assert rows == before and sft_rows == sft_before


def test_seeded_reproducible_and_different_across_batches_and_ranks(
    meap_lm: tuple[Any, Any, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tokenizer, _ = meap_lm
    rows = examples([200, 200])
    first, second = MEAPCollator(tokenizer, MEAPConfig(seed=3)), MEAPCollator(tokenizer, MEAPConfig(seed=3))
    a1, a2 = first(rows)["input_ids"], first(rows)["input_ids"]
    b1, b2 = second(rows)["input_ids"], second(rows)["input_ids"]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1[0], a1[1])
    assert not torch.equal(a1, MEAPCollator(tokenizer, MEAPConfig(seed=4))(rows)["input_ids"])
    monkeypatch.setenv("RANK", "1")
    assert not torch.equal(a1, MEAPCollator(tokenizer, MEAPConfig(seed=3))(rows)["input_ids"])


def test_shared_pattern_matches_official_parity(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    rows = examples([64, 64, 64])
    masked = MEAPCollator(tokenizer, MEAPConfig(per_row_positions=False))(rows)["input_ids"] == mask_id
    assert torch.equal(masked[0], masked[1]) and torch.equal(masked[0], masked[2])
    assert int(masked[0].sum()) == 9


def test_packed_rows_are_masked_per_sequence(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    rows = examples([61, 30])
    rows[0]["seq_lengths"] = [21, 40]  # type: ignore[assignment]
    for padding_free in (False, True):
        batch = MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.25), padding_free=padding_free)(rows)
        masked = (batch["input_ids"] == mask_id).reshape(-1)
        counts = [int(masked[a:b].sum()) for a, b in [(0, 21), (21, 61)]]
        assert counts == [5, 9]  # ⌊0.25·20⌋, ⌊0.25·39⌋
        assert not masked[20] and not masked[60]
        if padding_free:
            assert int(masked[61:].sum()) == 7 and not masked[90]
            assert batch["position_ids"][0, 21] == 0


def test_pre_padded_examples_are_repadded(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    pad = tokenizer.pad_token_id
    rows = [{"input_ids": [11, 12, 13, 14, 15, pad, pad], "attention_mask": [1, 1, 1, 1, 1, 0, 0]}]
    batch = MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.5))(rows)
    assert batch["labels"].tolist() == [[11, 12, 13, 14, 15]]
    assert int((batch["input_ids"] == mask_id).sum()) == 2 and batch["input_ids"][0, -1] == 15


def test_data_loader_workers_draw_different_masks(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, _ = meap_lm
    collator = MEAPCollator(tokenizer)
    pickle.loads(pickle.dumps(collator))  # spawn-started workers pickle the collator
    rows = examples([200]) * 2
    collator(rows)  # the main process's stream exists before the workers copy the collator
    loader = torch.utils.data.DataLoader(rows, batch_size=1, num_workers=2, collate_fn=collator)
    # Batch 0 comes from worker 0 and batch 1 from worker 1: the same row, each worker with its own stream
    # (a copied generator would repeat the same mask).
    first, second = (batch["input_ids"] for batch in loader)
    assert not torch.equal(first, second)


def test_pretraining_bad_input(meap_lm: tuple[Any, Any, int], tiny_lm: tuple[Any, Any]) -> None:
    _, tokenizer, _ = meap_lm
    with pytest.raises(ConfigError, match=r"no mask token '\[MASK\]'; call paperpack.meap.add_mask_token"):
        MEAPCollator(tiny_lm[1])
    with pytest.raises(TypeError, match="`config` must be a MEAPConfig"):
        MEAPCollator(tokenizer, {"mask_ratio": 0.1})  # type: ignore[arg-type]
    collator = MEAPCollator(tokenizer)
    with pytest.raises(ConfigError, match="`examples` must be a non-empty list"):
        collator([])
    with pytest.raises(ConfigError, match=r"`examples\[1\]` must be a dict with 'input_ids'"):
        collator([{"input_ids": [1, 2]}, {"text": "x"}])


# SFT -------------------------------------------------------------------------------------------------


def test_sft_masks_only_answer_tokens_in_a_separate_row(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    rows = [sft_example(30, 60), sft_example(10, 20), sft_example(5, 80)]
    rows[2]["input_ids"][-1] = tokenizer.eos_token_id
    batch = MEAPSFTCollator(tokenizer, MEAPConfig(sft_mask_ratio=0.1, min_answer_tokens=51))(rows)
    assert batch["input_ids"].shape[0] == 5  # three clean rows, masked copies of rows 0 and 2
    clean = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    width = clean["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][:3, :width], clean["input_ids"])
    assert torch.equal(batch["labels"][:3, :width], clean["labels"])
    for copy_row, source in ((3, 0), (4, 2)):
        masked = batch["input_ids"][copy_row] == mask_id
        answer = clean["labels"][source] != -100
        assert not (masked[:width] & ~answer).any()  # the prompt is never masked
        labels = batch["labels"][copy_row]
        assert torch.equal(labels[masked], clean["labels"][source][masked[:width]])
        assert (labels[~masked] == -100).all()
    # ⌊0.1·59⌋ (the last answer token is kept); row 2: its EOS is special, ⌊0.1·78⌋
    assert int((batch["input_ids"][3] == mask_id).sum()) == 5
    assert int((batch["input_ids"][4] == mask_id).sum()) == 7


def test_sft_short_answers_are_left_alone(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    rows = [sft_example(30, 50), sft_example(10, 20)]
    batch = MEAPSFTCollator(tokenizer, MEAPConfig(min_answer_tokens=51))(rows)
    reference = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    assert all(torch.equal(batch[key], reference[key]) for key in reference)
    assert not (batch["input_ids"] == mask_id).any()


def test_sft_concat_layout(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    rows = [sft_example(6, 20), sft_example(4, 3)]
    batch = MEAPSFTCollator(
        tokenizer, MEAPConfig(sft_mask_ratio=0.25, min_answer_tokens=4, sft_layout="concat")
    )(rows)
    assert batch["input_ids"].shape == (2, 52)
    first = batch["input_ids"][0]
    assert torch.equal(first[:26], torch.tensor(rows[0]["input_ids"]))
    masked = first[26:] == mask_id
    assert int(masked.sum()) == 4 and not masked[:6].any() and not masked[-1]  # ⌊0.25·19⌋
    assert torch.equal(first[26:][~masked], torch.tensor(rows[0]["input_ids"])[~masked])
    labels = batch["labels"][0]
    assert torch.equal(labels[:26], torch.tensor(rows[0]["labels"]))
    assert torch.equal(labels[26:][masked], torch.tensor(rows[0]["input_ids"])[masked])
    assert (labels[26:][~masked] == -100).all()
    assert batch["attention_mask"][1].sum() == 7  # the short answer has no copy


def test_sft_packed_rows(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    first, second = sft_example(5, 10), sft_example(3, 2)
    packed = {key: first[key] + second[key] for key in ("input_ids", "labels")}
    packed["seq_lengths"] = [15, 5]
    config = MEAPConfig(sft_mask_ratio=0.5, min_answer_tokens=3, sft_layout="concat")
    batch = MEAPSFTCollator(tokenizer, config, padding_free=True)([packed])
    # [clean 15 ; masked 15] then the short second sequence alone.
    assert batch["position_ids"][0].tolist() == list(range(30)) + list(range(5))
    assert int((batch["input_ids"][0, 15:30] == mask_id).sum()) == 4  # ⌊0.5·9⌋
    assert not (batch["input_ids"][0, 30:] == mask_id).any()
    separate = MEAPSFTCollator(tokenizer, MEAPConfig(sft_mask_ratio=0.5, min_answer_tokens=3))([packed])
    assert separate["input_ids"].shape == (2, 20)
    assert int((separate["input_ids"][1] == mask_id).sum()) == 4


def test_sft_bad_input(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, _ = meap_lm
    collator = MEAPSFTCollator(tokenizer)
    with pytest.raises(ConfigError, match=r"`examples\[0\]` has no 'labels'.*SFTTrainer"):
        collator([{"input_ids": [1, 2, 3]}])
    with pytest.raises(ConfigError, match=r"`examples\[0\]` has 2 labels for 3 input_ids"):
        collator([{"input_ids": [1, 2, 3], "labels": [1, 2]}])
