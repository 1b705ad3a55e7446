from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from paperpack.core.errors import ConfigError
from paperpack.meap import add_mask_token, mask_token_id


def test_adds_token_resizes_and_uses_the_mean_row(tiny_lm: tuple[Any, Any]) -> None:
    model, tokenizer = copy.deepcopy(tiny_lm[0]), copy.deepcopy(tiny_lm[1])
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    rows = before_in.shape[0]
    mask_id = add_mask_token(tokenizer, model)
    assert mask_id == rows == len(tokenizer) - 1
    assert tokenizer.mask_token == "[MASK]" and mask_id in tokenizer.all_special_ids
    assert tokenizer.convert_ids_to_tokens(tokenizer("a [MASK] b")["input_ids"]).count("[MASK]") == 1
    weight_in = model.get_input_embeddings().weight
    weight_out = model.get_output_embeddings().weight
    assert weight_in.shape[0] == rows + 1 == model.config.vocab_size
    assert torch.equal(weight_in[:rows], before_in) and torch.equal(weight_out[:rows], before_out)
    assert torch.allclose(weight_in[mask_id], before_in.mean(dim=0))
    assert torch.allclose(weight_out[mask_id], before_out.mean(dim=0))


def test_is_idempotent(meap_lm: tuple[Any, Any, int]) -> None:
    model, tokenizer, mask_id = copy.deepcopy(meap_lm[0]), copy.deepcopy(meap_lm[1]), meap_lm[2]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    size = len(tokenizer)
    assert add_mask_token(tokenizer, model) == mask_id
    assert len(tokenizer) == size
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())


def test_tied_embeddings(tiny_lm: tuple[Any, Any]) -> None:
    from paperpack.core.hf import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(tie_word_embeddings=True)
    mean = model.get_input_embeddings().weight.detach().mean(dim=0)
    mask_id = add_mask_token(tokenizer, model)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert torch.allclose(model.get_input_embeddings().weight[mask_id], mean)


def test_reuses_an_existing_special_token(tiny_lm: tuple[Any, Any]) -> None:
    model, tokenizer = copy.deepcopy(tiny_lm[0]), copy.deepcopy(tiny_lm[1])
    size = len(tokenizer)
    token_id = add_mask_token(tokenizer, model, token="<|system|>")
    assert token_id == tokenizer.convert_tokens_to_ids("<|system|>") and len(tokenizer) == size
    assert model.get_input_embeddings().weight.shape[0] == size


def test_lookup_errors(tiny_lm: tuple[Any, Any]) -> None:
    tokenizer = tiny_lm[1]
    with pytest.raises(ConfigError, match=r"no mask token '\[MASK\]'; call paperpack.meap.add_mask_token"):
        mask_token_id(tokenizer)
    with pytest.raises(ConfigError, match="must differ from the tokenizer's pad_token"):
        mask_token_id(tokenizer, "<pad>")
    with pytest.raises(ConfigError, match="`token` must be a non-empty string"):
        add_mask_token(copy.deepcopy(tokenizer), copy.deepcopy(tiny_lm[0]), token="")


def test_padded_vocabulary_is_not_resized(tiny_lm: tuple[Any, Any]) -> None:
    model, tokenizer = copy.deepcopy(tiny_lm[0]), copy.deepcopy(tiny_lm[1])
    rows = len(tokenizer)
    model.resize_token_embeddings(rows + 8, mean_resizing=False)  # a vocabulary padded for the hardware
    before = model.get_input_embeddings().weight.detach().clone()
    mask_id = add_mask_token(tokenizer, model)
    weight = model.get_input_embeddings().weight
    assert mask_id == rows and weight.shape[0] == rows + 8
    assert torch.allclose(weight[mask_id], before[:rows].mean(dim=0))
    assert torch.equal(weight[rows + 1 :], before[rows + 1 :])
