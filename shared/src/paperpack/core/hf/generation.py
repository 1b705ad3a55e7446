"""Sampling K completions per prompt in left-padded batches (used by packages that sample from a model)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int, check_positive, check_range

__all__ = ["Completion", "context_length", "encode_prompts", "sample_completions", "shared_prefix_length"]


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of a prompt.

    Attributes:
        text: the decoded new tokens, special tokens removed.
        token_ids: the new tokens, up to and including the end-of-sequence token, without padding.
        finished: whether generation stopped at the end-of-sequence token (not at ``max_new_tokens``).
    """

    text: str
    token_ids: list[int]
    finished: bool


def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    seed: int = 0,
    chat: bool = False,
    progress: bool = False,
    share_prefix: bool = False,
) -> list[list[Completion]]:
    """Sample ``num_samples`` completions for every prompt.

    Prompts are left-padded and generated ``batch_size`` at a time, each with ``num_samples`` return
    sequences. Sampling is seeded per batch from ``seed`` without touching the global random state, so a
    call is reproducible for the same prompts, batch size and seed.

    With ``share_prefix``, the longest run of leading tokens that every prompt of the call shares (a system
    prompt, instructions, few-shot examples: at most each prompt's length minus one token) goes through the
    model once; every batch starts from a copy of its key-value cache. Each row is then laid out as the shared
    prefix, the padding, the rest of the prompt: the attention mask hides the padding and the positions
    follow the mask, so every real token keeps the position and the context it has without sharing. The
    completions equal those of the plain path up to floating-point rounding (the paperpack tests find them
    equal token for token, greedy and seeded sampling, on Llama, Qwen2 and GPT-2). A model whose default
    cache is not a plain ``DynamicCache`` of full-attention layers (sliding windows, recurrent states, a
    static ``cache_implementation``) takes the plain path.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (a pad token is required).
        prompts: the prompt texts.
        num_samples: completions per prompt (K).
        max_new_tokens: the length limit of each completion.
        batch_size: prompts per ``generate`` call.
        temperature: the sampling temperature.
        top_p: nucleus sampling mass.
        do_sample: False for greedy decoding (then ``num_samples`` must be 1).
        seed: the sampling seed.
        chat: wrap each prompt as a user turn with the tokenizer's chat template.
        progress: show a tqdm bar over batches.
        share_prefix: compute the prompts' shared prefix once and reuse its key-value cache (see above).

    Raises:
        ConfigError: for a bad argument, a tokenizer without a pad token, or a prompt that with
            ``max_new_tokens`` would run past the model's context (:func:`context_length`).

    Returns:
        One list of ``num_samples`` :class:`Completion` per prompt, in prompt order.

    Examples:
        >>> from paperpack.core.hf import sample_completions, tiny_causal_lm
        >>> model, tokenizer = tiny_causal_lm()
        >>> out = sample_completions(model, tokenizer, ["the", "a red"], num_samples=2, max_new_tokens=4)
        >>> [len(samples) for samples in out], len(out[0][0].token_ids) <= 4
        ([2, 2], True)
    """
    check_int("num_samples", num_samples, minimum=1)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    check_positive("temperature", temperature)
    check_range("top_p", top_p, 0.0, 1.0, low_inclusive=False)
    if not do_sample and num_samples > 1:
        raise ConfigError(
            f"greedy decoding (do_sample=False) gives one completion, got num_samples={num_samples}"
        )
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            "the tokenizer has no pad token; set `tokenizer.pad_token` before batched generation"
        )
    texts = _prompt_texts(tokenizer, prompts, chat)
    limit = context_length(model)
    eos = tokenizer.eos_token_id
    generate = cast(Callable[..., torch.Tensor], model.generate)
    rng_devices = [model.device] if model.device.type == "cuda" else []
    prefix: _SharedPrefix | None = None
    encoded: list[list[int]] = []
    if share_prefix and texts:
        encoded = [list(ids) for ids in tokenizer(texts, add_special_tokens=not chat)["input_ids"]]
        with torch.random.fork_rng(devices=rng_devices):
            prefix = _SharedPrefix.build(model, encoded)
    results: list[list[Completion]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        starts = range(0, len(texts), batch_size)
        for number, start in enumerate(tqdm(starts, desc="generating", disable=not progress)):
            extra: dict[str, Any] = {}
            if prefix is None:
                batch = tokenizer(
                    texts[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=not chat,
                ).to(model.device)
            else:
                rows = encoded[start : start + batch_size]
                batch = prefix.batch(rows, tokenizer.pad_token_id, model.device)
                extra[prefix.argument] = prefix.cache_for(batch["input_ids"].shape[0] * num_samples)
            if limit is not None:
                _check_context(batch["attention_mask"], start, max_new_tokens, limit)
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(seed + number)
                with torch.no_grad():
                    output = generate(
                        **batch,
                        **extra,
                        do_sample=do_sample,
                        temperature=temperature if do_sample else None,
                        top_p=top_p if do_sample else None,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=num_samples,
                        pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=eos,
                    )
            new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
            for row in range(0, len(new_tokens), num_samples):
                results.append(
                    [_completion(ids, eos, tokenizer) for ids in new_tokens[row : row + num_samples]]
                )
    finally:
        tokenizer.padding_side = side
    return results


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``sequences`` share, leaving at least one token of each unshared.

    The limit keeps a token of every prompt for the model to read after the shared prefix, so that each
    prompt's next-token distribution comes from its own forward pass.

    Examples:
        >>> from paperpack.core.hf import shared_prefix_length
        >>> shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]), shared_prefix_length([[1, 2], [1, 2]])
        (3, 1)
    """
    if not sequences:
        return 0
    first = sequences[0]
    length = min(len(ids) for ids in sequences) - 1
    for ids in sequences[1:]:
        shared = 0
        while shared < length and ids[shared] == first[shared]:
            shared += 1
        length = shared
    return max(length, 0)


def _cache_argument() -> str:
    """The name ``generate`` and ``forward`` take a cache under: ``cache`` (newer) or ``past_key_values``."""
    from transformers.generation.utils import GenerationMixin

    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass
class _SharedPrefix:
    """The key-value cache of the tokens every prompt of a call starts with (``share_prefix=True``)."""

    ids: list[int]
    cache: Any
    argument: str

    @classmethod
    def build(cls, model: PreTrainedModel, encoded: list[list[int]]) -> _SharedPrefix | None:
        """Run the shared prefix through ``model`` once.

        None when the prompts share no prefix, or when the model's cache is not a plain ``DynamicCache`` of
        full-attention layers.
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        length = shared_prefix_length(encoded)
        if length == 0 or getattr(model.generation_config, "cache_implementation", None) is not None:
            return None
        supports = getattr(model, "_supports_default_dynamic_cache", None)
        if not callable(supports) or not supports():
            return None
        config = model.config.get_text_config(decoder=True)
        cache = DynamicCache(config=config)
        if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        argument = _cache_argument()
        ids = encoded[0][:length]
        inputs = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            mask = torch.ones_like(inputs)
            model(input_ids=inputs, attention_mask=mask, use_cache=True, **{argument: cache})
        return cls(ids=ids, cache=cache, argument=argument)

    def cache_for(self, rows: int) -> Any:
        """A fresh copy of the prefix cache with ``rows`` rows (``generate`` extends the cache it gets)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache

    def batch(self, rows: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Rows laid out as the shared prefix, padding, then the rest of each prompt, with their mask."""
        rests = [ids[len(self.ids) :] for ids in rows]
        width = max(len(rest) for rest in rests)
        input_ids = [self.ids + [pad_id] * (width - len(rest)) + rest for rest in rests]
        mask = [[1] * len(self.ids) + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests]
        return {
            "input_ids": torch.tensor(input_ids, device=device),
            "attention_mask": torch.tensor(mask, device=device),
        }


def _completion(ids: list[int], eos: int | None, tokenizer: PreTrainedTokenizerBase) -> Completion:
    finished = eos is not None and eos in ids
    if eos is not None and finished:
        ids = ids[: ids.index(eos) + 1]
    text = str(tokenizer.decode(ids, skip_special_tokens=True))
    return Completion(text=text, token_ids=ids, finished=finished)


def _prompt_texts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], chat: bool) -> list[str]:
    if isinstance(prompts, str):
        raise ConfigError("`prompts` must be a sequence of strings, got a single string; wrap it in a list")
    if not chat:
        return list(prompts)
    return [
        str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
        )
        for p in prompts
    ]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, chat: bool = False
) -> list[list[int]]:
    """The token ids :func:`sample_completions` gives the model for each prompt, without padding.

    A caller that trains on sampled completions joins these ids with :attr:`Completion.token_ids` to get the
    exact sequence the model produced.

    Example:
        >>> from paperpack.core.hf import encode_prompts, tiny_tokenizer
        >>> ids = encode_prompts(tiny_tokenizer(), ["the", "a red"])
        >>> len(ids), ids[0][0] == ids[1][0]  # each starts with the BOS token
        (2, True)
    """
    texts = _prompt_texts(tokenizer, prompts, chat)
    encoded = tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    return [list(ids) for ids in encoded]


_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(model: PreTrainedModel | Any) -> int | None:
    """The longest sequence (prompt and completion) a model's positions allow, from its config.

    Reads ``max_position_embeddings`` (Llama, Qwen2, Mistral, ...), ``n_positions`` (GPT-2) or the like from
    ``model.config`` (or from ``model`` itself when it is a config); None when the config names no limit.

    Example:
        >>> from paperpack.core.hf import context_length, tiny_causal_lm
        >>> context_length(tiny_causal_lm()[0])
        2048
    """
    config = getattr(model, "config", model)
    text_config = getattr(config, "get_text_config", None)
    if callable(text_config):
        config = text_config()
    for name in _CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _check_context(attention_mask: torch.Tensor, start: int, max_new_tokens: int, limit: int) -> None:
    lengths = attention_mask.sum(dim=1).tolist()
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] + max_new_tokens > limit:
        raise ConfigError(
            f"prompt {start + longest} has {lengths[longest]} tokens; with max_new_tokens={max_new_tokens} a "
            f"sample could reach {lengths[longest] + max_new_tokens} tokens, beyond the model's context of "
            f"{limit}; lower max_new_tokens or shorten the prompt"
        )
