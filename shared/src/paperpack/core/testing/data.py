"""Tiny datasets for tests, built in code in a moment: the same texts in every package's tests.

The pytest plugin serves them as session fixtures (``tiny_texts``, ``tiny_lm_dataset``, ``tiny_collator``,
``tiny_text_dataset``, ``tiny_prompt_completion_dataset``); scripts that run outside pytest (a distributed
test's worker) call these functions to get the same data.

Examples:
    >>> from paperpack.core.hf import tiny_tokenizer
    >>> from paperpack.core.testing.data import tiny_lm_dataset
    >>> dataset = tiny_lm_dataset(tiny_tokenizer())
    >>> len(dataset), max(len(ids) for ids in dataset["input_ids"]) <= 24
    (32, True)
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = ["tiny_lm_dataset", "tiny_prompt_completion_dataset", "tiny_text_dataset", "tiny_texts"]


def tiny_texts(count: int = 32, *, seed: int = 1) -> list[str]:
    """``count`` short lines of :func:`paperpack.core.hf.default_corpus` (varied lengths)."""
    from paperpack.core.hf import default_corpus

    return default_corpus(num_lines=count, seed=seed)


def tiny_lm_dataset(
    tokenizer: PreTrainedTokenizerBase, *, count: int = 32, max_length: int = 24, seed: int = 1
) -> Dataset:
    """:func:`tiny_texts` tokenized (``input_ids``, no padding): a causal-LM Trainer dataset.

    Pair it with :class:`paperpack.core.data.CausalLMCollator`.
    """
    from datasets import Dataset

    from paperpack.core.data import tokenize_texts

    return Dataset.from_list(tokenize_texts(tokenizer, tiny_texts(count, seed=seed), max_length=max_length))


def tiny_text_dataset(*, count: int = 32, seed: int = 1) -> Dataset:
    """:func:`tiny_texts` as a TRL language-modeling dataset (a ``text`` column)."""
    from datasets import Dataset

    return Dataset.from_list([{"text": text} for text in tiny_texts(count, seed=seed)])


def tiny_prompt_completion_dataset(*, count: int = 32, seed: int = 1) -> Dataset:
    """Additions as a TRL prompt-completion dataset: ``"Q: what is 3 + 4? A:"`` -> ``" 7"``."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        rows.append({"prompt": f"Q: what is {a} + {b}? A:", "completion": f" {a + b}"})
    return Dataset.from_list(rows)
