"""A tiny Llama-style model and a tokenizer trained in code: offline, deterministic, built in a second."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, TypeVar, overload

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int

__all__ = [
    "BENCHMARK_LLAMA",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "benchmark_llama",
    "default_corpus",
    "tiny_causal_lm",
    "tiny_tokenizer",
]

#: The tokenizer's special tokens: padding, begin and end of sequence, unknown, and the chat roles.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

#: A chat template with ``{% generation %}`` markers, so TRL's ``assistant_only_loss`` works.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_WORDS = tuple(
    (
        "the of and to in is was for on that with as by at from it this be are have not or an which one "
        "all their there been has more when will would who so no if out up into them can some only time "
        "other than then its also two new after first about what over these may years could most where "
        "people through many before any same under state while how between during three very where since "
        "because each well model train data value key record answer question reason step token layer "
        "weight merge average mask agent target graph update loss gradient rank safe help honest harm "
        "check store find return city name color number list table count small large early late north "
        "south east west river mountain blue red green yellow apple orange river house garden window "
        "paper pencil music winter summer morning evening"
    ).split()
)


def default_corpus(num_lines: int = 2000, seed: int = 0) -> list[str]:
    """Synthetic English-like lines with numbers, key-value records and punctuation.

    Enough to train a small byte-level BPE whose merges cover the text that paperpack's tests and demos make.
    """
    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        words = rng.choices(_WORDS, k=rng.randint(4, 14))
        kind = i % 4
        if kind == 0:
            lines.append(" ".join(words).capitalize() + ".")
        elif kind == 1:
            lines.append(
                f"{rng.choice(_WORDS)}-{rng.randint(0, 999)}: {rng.choice(_WORDS)} {rng.randint(0, 99)}"
            )
        elif kind == 2:
            lines.append(f"Q: what is {rng.randint(0, 99)} + {rng.randint(0, 99)}? A: " + " ".join(words[:4]))
        else:
            lines.append(", ".join(words) + "!")
    return lines


def tiny_tokenizer(*, vocab_size: int = 512, corpus: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer in code (any text encodes; no token is unknown).

    Args:
        vocab_size: the BPE vocabulary size, special tokens included (at least 256 + the special tokens).
        corpus: texts to learn merges from; :func:`default_corpus` when None.

    Returns:
        A ``PreTrainedTokenizerFast`` with pad, bos, eos and unk tokens, BOS added to every encoding, right
        padding, and :data:`CHAT_TEMPLATE`.
    """
    check_int("vocab_size", vocab_size, minimum=256 + len(SPECIAL_TOKENS))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus) if corpus is not None else default_corpus(), trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=list(SPECIAL_TOKENS[4:]),
        model_max_length=2048,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


TokenizerT = TypeVar("TokenizerT", bound=PreTrainedTokenizerBase)


@overload
def tiny_causal_lm(
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    tokenizer: None = None,
    **config_overrides: Any,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]: ...


@overload
def tiny_causal_lm(
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    tokenizer: TokenizerT,
    **config_overrides: Any,
) -> tuple[LlamaForCausalLM, TokenizerT]: ...


def tiny_causal_lm(
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **config_overrides: Any,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A tiny ``LlamaForCausalLM`` and its tokenizer, for tests, docs and demos.

    Everything is built in code, offline, in about a second, and identical for the same arguments. The
    tokenizer has no ``[MASK]`` token (packages that need one add it).

    Args:
        vocab_size: the tokenizer's BPE vocabulary size; the model's embedding matches the tokenizer.
        hidden_size: the model width (the MLP is 4 times wider).
        num_layers: decoder layers.
        num_heads: attention heads (as many key-value heads).
        seed: seeds the weight initialization without touching the global random state.
        corpus: texts for the tokenizer (see :func:`tiny_tokenizer`).
        tokenizer: use this tokenizer instead of training one (a task's own word-level vocabulary, say); the
            embedding matches its length and the model's pad, bos and eos ids are its own. ``vocab_size`` and
            ``corpus`` must then be left at their defaults.
        **config_overrides: any other ``LlamaConfig`` field, e.g. ``tie_word_embeddings=True``.

    Returns:
        ``(model, tokenizer)``, the model in float32 on the CPU, in training mode.

    Raises:
        ConfigError: for a bad size, or ``tokenizer`` given together with ``vocab_size`` or ``corpus``.

    Examples:
        >>> from paperpack.core.hf import tiny_causal_lm, tiny_tokenizer
        >>> model, tokenizer = tiny_causal_lm()
        >>> batch = tokenizer(["the model was small"], return_tensors="pt")
        >>> model(**batch, labels=batch["input_ids"]).loss.item() > 0
        True
        >>> words = tiny_tokenizer(vocab_size=300)
        >>> model, _ = tiny_causal_lm(tokenizer=words, max_position_embeddings=64)
        >>> model.config.vocab_size == len(words), model.config.max_position_embeddings
        (True, 64)
    """
    check_int("hidden_size", hidden_size, minimum=1)
    check_int("num_layers", num_layers, minimum=1)
    check_int("num_heads", num_heads, minimum=1)
    check_int("seed", seed, minimum=0)
    if tokenizer is None:
        tokenizer = tiny_tokenizer(vocab_size=vocab_size, corpus=corpus)
    elif vocab_size != 512 or corpus is not None:
        raise ConfigError(
            "give `tokenizer` or `vocab_size` / `corpus`, not both: a tokenizer has its vocabulary"
        )
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "max_position_embeddings": 2048,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    settings.update(config_overrides)
    config = LlamaConfig(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.train()
    return model, tokenizer


BENCHMARK_LLAMA: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
"""The ``LlamaConfig`` fields of :func:`benchmark_llama`: about 58M parameters, 32k vocabulary, untied."""


def benchmark_llama(*, seed: int = 0, **config_overrides: Any) -> LlamaForCausalLM:
    """The Llama-style causal LM of about 58M parameters that the packages' benchmarks measure on.

    The issues ask for step-time and memory figures on "a Llama of at least 50M parameters built from a
    config"; one shared model keeps those figures comparable across packages. Random weights, built in code,
    nothing downloaded; no tokenizer (benchmarks feed random token ids).

    Args:
        seed: seeds the weight initialization without touching the global random state.
        **config_overrides: any ``LlamaConfig`` field that replaces one of :data:`BENCHMARK_LLAMA`'s.

    Returns:
        The model in float32 on the CPU, in training mode.

    Examples:
        >>> from paperpack.core.hf import benchmark_llama
        >>> model = benchmark_llama(num_hidden_layers=1)
        >>> model.config.vocab_size, model.config.tie_word_embeddings
        (32000, False)
    """
    check_int("seed", seed, minimum=0)
    config = LlamaConfig(**{**BENCHMARK_LLAMA, **config_overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.train()
    return model
