"""Reading the JSON Lines files ``paperpack`` commands take, and turning texts into causal-LM batches.

:func:`read_jsonl` reports every problem with the file and the line. :class:`CausalLMCollator` pads texts (or
already tokenized examples) into one batch whose ``labels`` are the input ids with ``-100`` on the padding, so
the loss ignores it; :func:`causal_lm_batches` cuts a list of texts into such batches. Both fall back to the
end-of-sequence token for padding when a tokenizer has no pad token (:func:`ensure_pad_token`).

torch is imported only by the batching helpers, so reading data stays light.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paperpack.core.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "CausalLMCollator",
    "causal_lm_batches",
    "ensure_pad_token",
    "read_jsonl",
    "tokenize_prompt_completions",
    "tokenize_texts",
]

#: The label value the causal-LM loss ignores (padding, prompts).
IGNORE_INDEX = -100


def _decode(raw: bytes, file: Path, number: int) -> str:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{file}:{number} is not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
            "save the file as UTF-8"
        ) from None


def read_jsonl(path: str | os.PathLike[str], *, required: Sequence[str] = ("text",)) -> list[dict[str, Any]]:
    r"""Read a JSON Lines file: one JSON object per line, blank lines skipped.

    Args:
        path: the file.
        required: fields every record must have, each a string.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: when the file does not exist.
        ConfigError: naming the file, the line and the problem (bytes that are not UTF-8, bad JSON, not an
            object, a missing or non-string field, no records at all).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.data import read_jsonl
        >>> path = Path(tempfile.mkdtemp()) / "data.jsonl"
        >>> _ = path.write_text('{"text": "one"}\n\n{"text": "two"}\n')
        >>> [record["text"] for record in read_jsonl(path)]
        ['one', 'two']
        >>> _ = path.write_bytes(b'{"text": "one"}\n{"text": "caf\xe9"}\n')
        >>> read_jsonl(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: ...data.jsonl:2 is not UTF-8 text (byte 0xe9 at column 14); ...
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if not file.is_file():
        raise ConfigError(f"data file {str(path)!r} is a folder, not a JSON Lines file")
    records = []
    with file.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            line = _decode(raw, file, number)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{file}:{number} is not valid JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{file}:{number} must be a JSON object, got {type(record).__name__}")
            for field in required:
                if not isinstance(record.get(field), str):
                    raise ConfigError(
                        f"{file}:{number} needs a string field {field!r}; it has {sorted(record)}"
                    )
            records.append(record)
    if not records:
        raise ConfigError(f"data file {file} holds no records")
    return records


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Give ``tokenizer`` a pad token if it has none (its end-of-sequence token), and return the pad id.

    Many causal-LM tokenizers (GPT-2, Llama) ship without a pad token; padding with EOS is the usual fallback,
    and the loss still ignores padding because labels are masked by the attention mask, not by token id.

    Raises:
        ConfigError: when the tokenizer has neither a pad nor an end-of-sequence token.

    Examples:
        >>> from paperpack.core.data import ensure_pad_token
        >>> from paperpack.core.hf import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer()
        >>> tokenizer.pad_token = None
        >>> ensure_pad_token(tokenizer) == tokenizer.eos_token_id, tokenizer.pad_token
        (True, '</s>')
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "the tokenizer has neither a pad token nor an end-of-sequence token to pad with; set "
                "`tokenizer.pad_token` first"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_length: int | None = None
) -> list[dict[str, list[int]]]:
    """Tokenize each text on its own (no padding), truncated to ``max_length`` tokens: a Trainer dataset.

    Pair it with :class:`CausalLMCollator`, which pads each batch and sets the labels.

    Examples:
        >>> from paperpack.core.data import tokenize_texts
        >>> from paperpack.core.hf import tiny_tokenizer
        >>> rows = tokenize_texts(tiny_tokenizer(), ["the", "a much longer text than that"], max_length=4)
        >>> len(rows[0]["input_ids"]) < len(rows[1]["input_ids"]) == 4
        True
    """
    if isinstance(texts, str):
        raise ConfigError("`texts` must be a sequence of strings, got a single string; wrap it in a list")
    encoded = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)
    return [{"input_ids": list(ids)} for ids in encoded["input_ids"]]


def tokenize_prompt_completions(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    max_length: int | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenize prompt-completion pairs whose loss falls on the completion only: a Trainer dataset.

    Each row's ``input_ids`` are the prompt's tokens (with the tokenizer's special tokens), the completion's
    (without) and the end-of-sequence token; its ``labels`` are ``-100`` on the prompt, so the causal-LM loss
    counts the completion and the end of sequence. Rows longer than ``max_length`` lose their last tokens.
    Pair it with :class:`CausalLMCollator`, which pads ``input_ids`` and ``labels`` alike.

    Raises:
        ConfigError: for lists of different lengths, a single string, or a tokenizer without an
            end-of-sequence token.

    Examples:
        >>> from paperpack.core.data import tokenize_prompt_completions
        >>> from paperpack.core.hf import tiny_tokenizer
        >>> tokenizer = tiny_tokenizer()
        >>> (row,) = tokenize_prompt_completions(tokenizer, ["what is 2 + 3?"], [" 5"])
        >>> prompt = len(tokenizer("what is 2 + 3?")["input_ids"])
        >>> row["labels"][:prompt] == [-100] * prompt, row["labels"][prompt:] == row["input_ids"][prompt:]
        (True, True)
    """
    from paperpack.core.validation import check_int

    if isinstance(prompts, str) or isinstance(completions, str):
        raise ConfigError("`prompts` and `completions` must be sequences of strings, not single strings")
    if len(prompts) != len(completions):
        raise ConfigError(
            f"got {len(prompts)} prompts but {len(completions)} completions; pair them one to one"
        )
    if max_length is not None:
        check_int("max_length", max_length, minimum=1)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no end-of-sequence token to end each completion with")
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    rows = []
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        answer = [*completion, tokenizer.eos_token_id]
        ids, labels = [*prompt, *answer], [IGNORE_INDEX] * len(prompt) + answer
        rows.append({"input_ids": ids[:max_length], "labels": labels[:max_length]})
    return rows


class CausalLMCollator:
    """Pad texts or tokenized examples into a causal-LM batch; ``labels`` are ``-100`` on the padding.

    Called with a list of strings, it tokenizes them (truncated to ``max_length``); called with examples that
    hold ``input_ids`` (and optionally ``labels``, e.g. ``-100`` on a prompt), it pads them. The labels of a
    token follow the attention mask, not its id, so an end-of-sequence token used as padding is still learned
    where it is real text.

    Args:
        tokenizer: the model's tokenizer; given a pad token (its EOS) if it has none.
        max_length: truncate texts to this many tokens (None: no truncation).

    Examples:
        >>> from paperpack.core.data import CausalLMCollator
        >>> from paperpack.core.hf import tiny_tokenizer
        >>> collate = CausalLMCollator(tiny_tokenizer())
        >>> batch = collate(["the model", "a much longer text than that"])
        >>> batch["input_ids"].shape == batch["labels"].shape, int((batch["labels"][0] == -100).sum()) > 0
        (True, True)
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, max_length: int | None = None) -> None:
        from paperpack.core.validation import check_int

        if max_length is not None:
            check_int("max_length", max_length, minimum=1)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_token_id = ensure_pad_token(tokenizer)

    def __call__(self, examples: Sequence[str] | Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """The padded batch: ``input_ids``, ``attention_mask`` and ``labels``."""
        if not examples:
            raise ConfigError("cannot collate an empty batch")
        if isinstance(examples, str):
            raise ConfigError("expected a list of texts, got a single string; wrap it in a list")
        if all(isinstance(example, str) for example in examples):
            encoded = self.tokenizer(
                list(examples),
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                return_tensors="pt",
            )
            input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
            return {
                "input_ids": input_ids,
                "attention_mask": mask,
                "labels": input_ids.masked_fill(mask == 0, -100),
            }
        return self._pad(examples)  # type: ignore[arg-type]

    def _pad(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        import torch

        rows = [list(example["input_ids"]) for example in examples]
        width = max(len(row) for row in rows)
        left = self.tokenizer.padding_side == "left"

        def pad(row: list[int], value: int) -> list[int]:
            filler = [value] * (width - len(row))
            return filler + row if left else row + filler

        input_ids = torch.tensor([pad(row, self.pad_token_id) for row in rows])
        mask = torch.tensor([pad([1] * len(row), 0) for row in rows])
        if all("labels" in example for example in examples):
            labels = torch.tensor([pad(list(example["labels"]), IGNORE_INDEX) for example in examples])
        else:
            labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def causal_lm_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int | None = None,
) -> list[dict[str, Tensor]]:
    """Cut ``texts`` into padded causal-LM batches of ``batch_size`` (the last may be smaller), in order.

    Args:
        tokenizer: the model's tokenizer (given a pad token if it has none).
        texts: the texts.
        batch_size: texts per batch.
        max_length: truncate each text to this many tokens (None: no truncation).

    Returns:
        Batches with ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on the padding).

    Raises:
        ConfigError: for an empty list, a single string, or a bad ``batch_size`` / ``max_length``.

    Examples:
        >>> from paperpack.core.data import causal_lm_batches
        >>> from paperpack.core.hf import tiny_tokenizer
        >>> batches = causal_lm_batches(tiny_tokenizer(), ["one", "two", "three"], batch_size=2)
        >>> [len(batch["input_ids"]) for batch in batches]
        [2, 1]
    """
    from paperpack.core.validation import check_int

    check_int("batch_size", batch_size, minimum=1)
    if isinstance(texts, str) or not texts:
        raise ConfigError("`texts` must be a non-empty list of strings")
    collate = CausalLMCollator(tokenizer, max_length=max_length)
    return [collate(list(texts[start : start + batch_size])) for start in range(0, len(texts), batch_size)]
