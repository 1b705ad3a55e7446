"""Data helpers: JSON Lines errors with file and line, pad-token fallback, causal-LM batches."""

import copy

import pytest
import torch

from paperpack.core.data import (
    IGNORE_INDEX,
    CausalLMCollator,
    causal_lm_batches,
    ensure_pad_token,
    read_jsonl,
    tokenize_prompt_completions,
    tokenize_texts,
)
from paperpack.core.errors import ConfigError

TEXTS = ["the model", "a much longer text than the first one", "key-7: value 3"]


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    return copy.deepcopy(tiny_lm[1])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"text": "a"}\n{"text": "caf\xe9"}\n',
            r"data.jsonl:2 is not UTF-8 text \(byte 0xe9 at column 14\)",
        ),
        (b'{"text": "a"}\n{"text": \n', r"data.jsonl:2 is not valid JSON"),
        (b'["a"]\n', r"data.jsonl:1 must be a JSON object, got list"),
        (b'{"prompt": "a"}\n', r"data.jsonl:1 needs a string field 'text'; it has \['prompt'\]"),
        (b"\n\n", r"holds no records"),
    ],
)
def test_read_jsonl_names_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_jsonl(path)


def test_read_jsonl_reads_a_byte_order_mark_and_refuses_folders(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n')
    assert read_jsonl(path) == [{"text": "one"}]
    with pytest.raises(ConfigError, match="is a folder"):
        read_jsonl(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_pad_token_fallback(tokenizer):
    without = copy.deepcopy(tokenizer)
    without.pad_token = None
    assert ensure_pad_token(without) == without.eos_token_id and without.pad_token == "</s>"
    assert ensure_pad_token(tokenizer) == tokenizer.pad_token_id != tokenizer.eos_token_id
    neither = copy.deepcopy(without)
    neither.pad_token, neither.eos_token = None, None
    with pytest.raises(ConfigError, match="neither a pad token nor an end-of-sequence token"):
        ensure_pad_token(neither)


def test_batches_ignore_exactly_the_padding(tokenizer):
    (batch,) = causal_lm_batches(tokenizer, TEXTS, batch_size=3)
    expected = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["labels"] == IGNORE_INDEX, expected["attention_mask"] == 0)
    assert torch.equal(
        batch["labels"][batch["labels"] != IGNORE_INDEX],
        expected["input_ids"][expected["attention_mask"] == 1],
    )


def test_eos_padding_still_learns_a_real_eos(tokenizer):
    """With EOS as the pad token, an EOS that ends a text is a label; only the padding after it is ignored."""
    eos_padded = copy.deepcopy(tokenizer)
    eos_padded.pad_token = None
    texts = ["short" + eos_padded.eos_token, "a much longer text than the other" + eos_padded.eos_token]
    (batch,) = causal_lm_batches(eos_padded, texts, batch_size=2)
    first = batch["labels"][0]
    length = int(batch["attention_mask"][0].sum())
    assert first[length - 1] == eos_padded.eos_token_id
    assert (first[length:] == IGNORE_INDEX).all() and length < first.numel()


def test_truncation_and_batch_sizes(tokenizer):
    batches = causal_lm_batches(tokenizer, TEXTS * 3, batch_size=4, max_length=5)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 1]
    assert max(b["input_ids"].shape[1] for b in batches) == 5
    with pytest.raises(ConfigError, match="`batch_size` must be >= 1, got 0"):
        causal_lm_batches(tokenizer, TEXTS, batch_size=0)
    with pytest.raises(ConfigError, match="non-empty list of strings"):
        causal_lm_batches(tokenizer, "one text", batch_size=2)
    with pytest.raises(ConfigError, match="`max_length` must be >= 1, got 0"):
        CausalLMCollator(tokenizer, max_length=0)


def test_collator_pads_tokenized_examples_and_keeps_their_labels(tokenizer):
    rows = tokenize_texts(tokenizer, TEXTS, max_length=8)
    collate = CausalLMCollator(tokenizer)
    batch = collate(rows)
    texts_batch = CausalLMCollator(tokenizer, max_length=8)(TEXTS)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], texts_batch[key]), key
    prompt = [
        {"input_ids": [1, 5, 6, 7], "labels": [-100, -100, 6, 7]},
        {"input_ids": [1, 5], "labels": [-100, 5]},
    ]
    padded = collate(prompt)
    assert padded["labels"].tolist() == [[-100, -100, 6, 7], [-100, 5, -100, -100]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    assert CausalLMCollator(left)(prompt)["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    with pytest.raises(ConfigError, match="empty batch"):
        collate([])


def test_the_batches_train_a_model(tiny_lm):
    model = copy.deepcopy(tiny_lm[0])
    (batch,) = causal_lm_batches(tiny_lm[1], TEXTS, batch_size=3)
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0


def test_prompt_completions_learn_the_completion_only(tokenizer):
    rows = tokenize_prompt_completions(tokenizer, ["what is 2 + 3?", "say hi"], [" 5", " hi there"])
    for row, prompt, completion in zip(rows, ["what is 2 + 3?", "say hi"], [" 5", " hi there"], strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer = [*tokenizer(completion, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        assert row["input_ids"] == prompt_ids + answer
        assert row["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer
    batch = CausalLMCollator(tokenizer)(rows)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    (short,) = tokenize_prompt_completions(tokenizer, ["what is 2 + 3?"], [" 5"], max_length=3)
    assert len(short["input_ids"]) == len(short["labels"]) == 3
    with pytest.raises(ConfigError, match="got 2 prompts but 1 completions"):
        tokenize_prompt_completions(tokenizer, ["a", "b"], ["c"])
    with pytest.raises(ConfigError, match="not single strings"):
        tokenize_prompt_completions(tokenizer, "ab", "cd")
