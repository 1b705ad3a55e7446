"""The ``[MASK]`` token: adding it to a tokenizer and model, finding its id."""

from __future__ import annotations

import logging
from typing import Any

import torch

from paperpack.core.errors import ConfigError

__all__ = ["add_mask_token", "mask_token_id"]

logger = logging.getLogger(__name__)


def _token_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(token_id)


def mask_token_id(tokenizer: Any, token: str = "[MASK]") -> int:
    """Return the id of ``token`` in ``tokenizer``, which must already hold it.

    Args:
        tokenizer: a transformers tokenizer.
        token: the mask token string (``MEAPConfig.mask_token``).

    Raises:
        ConfigError: when the token is missing (call :func:`add_mask_token` first, or name a reserved special
            token that the vocabulary has) or coincides with the pad, BOS, EOS or UNK token.

    Examples:
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.meap import add_mask_token, mask_token_id
        >>> model, tokenizer = tiny_causal_lm()
        >>> add_mask_token(tokenizer, model) == mask_token_id(tokenizer)
        True
    """
    if not isinstance(token, str) or not token:
        raise ConfigError(f"`token` must be a non-empty string, got {token!r}")
    token_id = _token_id(tokenizer, token)
    if token_id is None:
        raise ConfigError(
            f"the tokenizer has no mask token {token!r}; call paperpack.meap.add_mask_token(tokenizer, "
            "model) to add it (and resize the embeddings), or set `mask_token` to a special token the "
            "vocabulary has"
        )
    for role in ("pad_token", "bos_token", "eos_token", "unk_token"):
        if getattr(tokenizer, f"{role}_id", None) == token_id:
            raise ConfigError(
                f"the mask token {token!r} must differ from the tokenizer's {role} (id {token_id})"
            )
    return token_id


@torch.no_grad()
def add_mask_token(tokenizer: Any, model: Any, token: str = "[MASK]") -> int:
    """Make sure ``tokenizer`` and ``model`` have the MEAP mask token; return its id.

    When the token is missing it is added as a special token (registered as the tokenizer's
    ``mask_token``), the model's embeddings are resized to the new vocabulary and the new row of the input
    embedding (and of an untied output embedding) is set to the mean of the existing rows. When the token
    is present nothing changes, except that the embeddings are grown if they are too small for its id.
    Calling it twice is therefore harmless. The official code likewise adds ``[MASK]`` to the LLaMA-2
    tokenizer before training. With PEFT LoRA, train the new row too, e.g.
    ``LoraConfig(trainable_token_indices=[mask_id])``.

    Args:
        tokenizer: a transformers tokenizer; modified in place.
        model: a transformers ``PreTrainedModel``; its embeddings are resized in place when needed.
        token: the mask token string.

    Returns:
        The token's id.

    Raises:
        ConfigError: for an empty token or one that coincides with the pad, BOS, EOS or UNK token.

    Examples:
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.meap import add_mask_token
        >>> model, tokenizer = tiny_causal_lm()
        >>> mask_id = add_mask_token(tokenizer, model)
        >>> add_mask_token(tokenizer, model) == mask_id == len(tokenizer) - 1
        True
    """
    if not isinstance(token, str) or not token:
        raise ConfigError(f"`token` must be a non-empty string, got {token!r}")
    embeddings = model.get_input_embeddings()
    old_rows = int(embeddings.weight.shape[0])
    added = _token_id(tokenizer, token) is None
    if added:
        tokenizer.add_special_tokens({"mask_token": token})
        logger.info("added the mask token %r to the tokenizer", token)
    token_id = mask_token_id(tokenizer, token)
    if token_id >= old_rows:
        model.resize_token_embeddings(max(len(tokenizer), token_id + 1), mean_resizing=False)
    if added:
        # The mean row keeps the new token's logits and inputs at the centre of what the model knows;
        # transformers' mean_resizing samples around the mean instead, which is not reproducible.
        vocab_rows = min(old_rows, token_id)
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is None or vocab_rows == 0:
                continue
            layer.weight[token_id] = layer.weight[:vocab_rows].mean(dim=0)
            bias = getattr(layer, "bias", None)
            if bias is not None and bias.shape[0] > token_id:
                bias[token_id] = bias[:vocab_rows].mean()
    return token_id
