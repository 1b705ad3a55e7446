"""MEAPCollator (pretraining) and MEAPSFTCollator on hand-made batches."""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import numpy as np
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
    assert masked.sum(dim=1).tolist() == [5, 2, 14]  # ⌊0.15·39⌋, ⌊0.15·18⌋ (EOS protected), ⌊0.15·99⌋
    assert torch.equal(batch["input_ids"][~masked], reference["input_ids"][~masked])
    assert not masked[1, 5] and not masked[0, 39:41].any() and not masked[1, 19:21].any()
    assert not masked[2, 99:101].any()
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
    _, tokenizer, mask_id = meap_lm
    rows, others = examples([200, 200]), examples([200, 200], start=11)
    first, second = MEAPCollator(tokenizer, MEAPConfig(seed=3)), MEAPCollator(tokenizer, MEAPConfig(seed=3))
    a1, a2 = first(rows)["input_ids"], first(others)["input_ids"]
    b2, b1 = second(others)["input_ids"], second(rows)["input_ids"]
    # The masks depend on the batch, not on what the collator drew before (resume, data-loader workers).
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1 == mask_id, a2 == mask_id)  # another batch, other positions
    assert not torch.equal(a1[0], a1[1])
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
        assert counts == [4, 9]  # ⌊0.25·19⌋, ⌊0.25·38⌋
        assert not masked[19:21].any() and not masked[59:61].any()
        if padding_free:
            assert int(masked[61:].sum()) == 7 and not masked[89:91].any()
            assert batch["position_ids"][0, 21] == 0


def test_pre_padded_examples_are_repadded(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    pad = tokenizer.pad_token_id
    rows = [{"input_ids": [11, 12, 13, 14, 15, pad, pad], "attention_mask": [1, 1, 1, 1, 1, 0, 0]}]
    batch = MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.5))(rows)
    assert batch["labels"].tolist() == [[11, 12, 13, 14, 15]]
    assert int((batch["input_ids"] == mask_id).sum()) == 1 and batch["input_ids"][0, -2:].tolist() == [14, 15]


def test_data_loader_workers_draw_the_masks_of_the_main_process(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    collator = MEAPCollator(tokenizer)
    rows = examples([200, 150, 120, 90])
    in_process = [collator([row])["input_ids"] for row in rows]
    assert len({tuple((batch[0, :90] == mask_id).tolist()) for batch in in_process}) == 4
    # Spawn-started workers unpickle the collator, forked ones copy it: either way a batch gets its masks.
    copied = pickle.loads(pickle.dumps(collator))
    loader = torch.utils.data.DataLoader(rows, batch_size=1, num_workers=2, collate_fn=copied)
    from_workers = [batch["input_ids"] for batch in loader]
    assert all(torch.equal(a, b) for a, b in zip(from_workers, in_process, strict=True))


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
    for bad in ([], [1.5, 2.0], [[1, 2]]):
        with pytest.raises(ConfigError, match=r"`examples\[0\]\['input_ids'\]` must be a non-empty 1-D"):
            collator([{"input_ids": bad}])


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


def literal_segments(row: dict[str, Any], config: MEAPConfig, special: set[int]) -> list[dict[str, Any]]:
    """Each sequence of a (packed) SFT row with the set E of its maskable positions and n = ⌊r·|E|⌋."""
    segments, start = [], 0
    for size in row.get("seq_lengths", [len(row["input_ids"])]):
        ids, labels = row["input_ids"][start : start + size], row["labels"][start : start + size]
        answer = [t for t in range(size) if labels[t] != -100 and ids[t] not in special]
        eligible = {t for t in answer if t != size - 1} if len(answer) >= config.min_answer_tokens else set()
        count = math.floor(config.sft_mask_ratio * len(eligible))
        segments.append({"ids": ids, "labels": labels, "eligible": eligible, "count": count})
        start += size
    return segments


def check_copy(segment: dict[str, Any], copy_ids: list[int], copy_labels: list[int], mask_id: int) -> None:
    """A masked copy: n masks on E, the other tokens unchanged, loss only at the masks (original tokens)."""
    ids = segment["ids"]
    masked = {t for t, token in enumerate(copy_ids) if token == mask_id}
    assert len(masked) == segment["count"] and masked <= segment["eligible"]
    assert copy_ids == [mask_id if t in masked else token for t, token in enumerate(ids)]
    assert copy_labels == [token if t in masked else -100 for t, token in enumerate(ids)]


@pytest.mark.parametrize("layout", ["separate", "concat"])
def test_sft_layouts_match_a_literal_construction(meap_lm: tuple[Any, Any, int], layout: str) -> None:
    # Several packed rows of different lengths: sequences with long and short answers, a special token in an
    # answer, a row whose sequences are all short (no copy). Read back sequence by sequence.
    _, tokenizer, mask_id = meap_lm
    special = set(tokenizer.all_special_ids)
    layouts = [[(4, 30), (6, 2), (3, 12)], [(10, 3)], [(2, 9), (5, 40)], [(8, 20)]]
    rows: list[dict[str, Any]] = []
    for index, sequences in enumerate(layouts):
        parts = [sft_example(prompt, answer, start=10 + 37 * index) for prompt, answer in sequences]
        row = {key: [token for part in parts for token in part[key]] for key in ("input_ids", "labels")}
        row["seq_lengths"] = [prompt + answer for prompt, answer in sequences]
        rows.append(row)
    rows[2]["input_ids"][20] = tokenizer.eos_token_id  # inside the answer of its second sequence
    config = MEAPConfig(sft_mask_ratio=0.3, min_answer_tokens=5, sft_layout=layout, seed=1)
    batch = MEAPSFTCollator(tokenizer, config, return_position_ids=True)(rows)
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    positions, lengths = batch["position_ids"].tolist(), batch["attention_mask"].sum(dim=1).tolist()
    expected_rows = len(rows)
    for index, row in enumerate(rows):
        segments = literal_segments(row, config, special)
        pointer = 0
        for segment in segments:
            size = len(segment["ids"])
            assert ids[index][pointer : pointer + size] == segment["ids"]
            assert labels[index][pointer : pointer + size] == segment["labels"]
            doubled = layout == "concat" and segment["count"] > 0
            if doubled:
                copy = slice(pointer + size, pointer + 2 * size)
                check_copy(segment, ids[index][copy], labels[index][copy], mask_id)
            span = size * (2 if doubled else 1)
            assert positions[index][pointer : pointer + span] == list(range(span))
            pointer += span
        assert lengths[index] == pointer
        if layout == "separate" and any(segment["count"] for segment in segments):
            copy_row, pointer = expected_rows, 0
            for segment in segments:
                size = len(segment["ids"])
                span = slice(pointer, pointer + size)
                check_copy(segment, ids[copy_row][span], labels[copy_row][span], mask_id)
                pointer += size
            assert lengths[copy_row] == pointer
            expected_rows += 1
    assert len(ids) == expected_rows
    assert expected_rows == (7 if layout == "separate" else 4)  # rows 0, 2 and 3 have masks; row 1 none


def test_token_arrays_and_tensors_are_accepted_and_not_modified(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, _ = meap_lm
    rows = examples([40, 25])
    as_lists = MEAPCollator(tokenizer, MEAPConfig(seed=5))(rows)
    arrays = [{"input_ids": np.array(row["input_ids"], dtype=np.int32)} for row in rows]
    tensors = [{"input_ids": torch.tensor(row["input_ids"])} for row in rows]
    before = [row["input_ids"].copy() for row in arrays], [row["input_ids"].clone() for row in tensors]
    for other in (arrays, tensors):
        batch = MEAPCollator(tokenizer, MEAPConfig(seed=5))(other)
        assert all(torch.equal(batch[key], as_lists[key]) for key in as_lists)
        assert batch["input_ids"].dtype == torch.long
    assert all(np.array_equal(row["input_ids"], kept) for row, kept in zip(arrays, before[0], strict=True))
    assert all(torch.equal(row["input_ids"], kept) for row, kept in zip(tensors, before[1], strict=True))


def test_sft_bad_input(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, _ = meap_lm
    collator = MEAPSFTCollator(tokenizer)
    with pytest.raises(ConfigError, match=r"`examples\[0\]` has no 'labels'.*SFTTrainer"):
        collator([{"input_ids": [1, 2, 3]}])
    with pytest.raises(ConfigError, match=r"`examples\[0\]` has 2 labels for 3 input_ids"):
        collator([{"input_ids": [1, 2, 3], "labels": [1, 2]}])
    with pytest.raises(ConfigError, match=r"`examples\[0\]` has 2 attention_mask for 3 input_ids"):
        collator([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "attention_mask": [1, 1]}])
    with pytest.raises(ConfigError, match=r"`examples\[0\]\['labels'\]` must be a non-empty 1-D sequence"):
        collator([{"input_ids": [1, 2, 3], "labels": [1.0, 2.0, 3.0]}])
    with pytest.raises(ConfigError, match=r"`examples\[1\]\['seq_lengths'\]` must be positive and sum to"):
        collator([sft_example(2, 3), {**sft_example(2, 3), "seq_lengths": [2, 2]}])


# Epochs, the official count ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pretraining", "sft"])
def test_masks_differ_across_epochs_and_are_reproducible(meap_lm: tuple[Any, Any, int], kind: str) -> None:
    """Issue 14: at one example per batch the masks were the same in every epoch."""
    _, tokenizer, mask_id = meap_lm
    if kind == "pretraining":
        rows: list[dict[str, Any]] = examples([120])
        make = lambda: MEAPCollator(tokenizer, MEAPConfig(seed=5))  # noqa: E731
    else:
        rows = [sft_example(10, 120)]
        make = lambda: MEAPSFTCollator(tokenizer, MEAPConfig(seed=5))  # noqa: E731
    collator, rerun = make(), make()
    per_epoch = []
    for epoch in range(3):
        collator.set_epoch(epoch)
        per_epoch.append(collator(rows)["input_ids"] == mask_id)
    assert per_epoch[0].any()
    assert not torch.equal(per_epoch[0], per_epoch[1]) and not torch.equal(per_epoch[1], per_epoch[2])
    rerun.set_epoch(1)  # a rerun (or a resumed run) that starts at epoch 1 draws epoch 1's masks
    assert torch.equal(rerun(rows)["input_ids"] == mask_id, per_epoch[1])
    assert "epoch=1" in repr(rerun)
    with pytest.raises(ConfigError, match="`epoch` must be >= 0, got -1"):
        collator.set_epoch(-1)


def test_epoch_callback_checks_its_collators_and_workers(
    meap_lm: tuple[Any, Any, int], tmp_path: Any
) -> None:
    from transformers import TrainerControl, TrainerState

    from paperpack.core.hf import training_args
    from paperpack.meap import MEAPEpochCallback

    _, tokenizer, _ = meap_lm
    with pytest.raises(TypeError, match="takes MEAPCollator or MEAPSFTCollator objects, got function"):
        MEAPEpochCallback(lambda rows: rows)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got none"):
        MEAPEpochCallback()
    collator = MEAPCollator(tokenizer)
    callback = MEAPEpochCallback(collator)
    state = TrainerState()
    state.epoch = 2.5  # resumed in the middle of the third epoch
    args = training_args(tmp_path, dataloader_num_workers=2, dataloader_persistent_workers=True)
    callback.on_epoch_begin(args, state, TrainerControl())
    assert collator.epoch == 2
    with pytest.raises(ConfigError, match="`dataloader_persistent_workers` must be False"):
        callback.on_train_begin(args, state, TrainerControl())


def test_official_count_masks_short_sequences(meap_lm: tuple[Any, Any, int]) -> None:
    _, tokenizer, mask_id = meap_lm
    rows = examples([6, 60])  # 4 and 58 eligible positions
    counts = {
        rule: (MEAPCollator(tokenizer, MEAPConfig(mask_count=rule))(rows)["input_ids"] == mask_id).sum(dim=1)
        for rule in ("floor", "at_least_one")
    }
    assert counts["floor"].tolist() == [0, 8]  # ⌊0.15·4⌋, ⌊0.15·58⌋
    assert counts["at_least_one"].tolist() == [1, 8]
    sft = MEAPSFTCollator(
        tokenizer, MEAPConfig(sft_mask_ratio=0.1, min_answer_tokens=4, mask_count="at_least_one")
    )
    assert int((sft([sft_example(3, 6)])["input_ids"] == mask_id).sum()) == 1  # ⌊0.1·5⌋ = 0, raised to 1
    with pytest.raises(ConfigError, match="`mask_count` must be one of 'floor', 'at_least_one', got 'ceil'"):
        MEAPConfig(mask_count="ceil")  # type: ignore[arg-type]
