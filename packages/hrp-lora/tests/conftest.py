"""Fixtures shared by the hrp-lora tests: tiny language-model batches and model factories."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, PreTrainedTokenizerFast

from paperpack.core.hf import default_corpus

LMBatch = dict[str, torch.Tensor]


def lm_batches(tokenizer: PreTrainedTokenizerFast, count: int, size: int = 4, seed: int = 1) -> list[LMBatch]:
    """``count`` padded batches of corpus lines with ``labels`` (-100 on padding)."""
    lines = default_corpus(num_lines=count * size, seed=seed)
    batches = []
    for start in range(0, count * size, size):
        encoded = tokenizer(
            lines[start : start + size], return_tensors="pt", padding=True, truncation=True, max_length=20
        )
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        batches.append(
            {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
        )
    return batches


@pytest.fixture(scope="session")
def batches(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> list[LMBatch]:
    return lm_batches(tiny_lm[1], 4)


@pytest.fixture
def fresh_model(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> Callable[[], LlamaForCausalLM]:
    return lambda: copy.deepcopy(tiny_lm[0])


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 (Conv1D layers, tied embeddings) on the tiny tokenizer."""
    tokenizer = tiny_lm[1]
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def _randomize_adapter(model: torch.nn.Module, adapter: str, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if f".{adapter}." in f"{name}." and "lora_" in name:
                parameter.copy_(
                    torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.1
                )


@pytest.fixture(scope="session")
def randomize_adapter() -> Callable[..., None]:
    """``randomize_adapter(model, adapter, seed=0)``: random factors, a stand-in for a preheated adapter."""
    return _randomize_adapter


@pytest.fixture(scope="session")
def make_batches() -> Callable[..., list[LMBatch]]:
    """``make_batches(tokenizer, count, size=4, seed=1)``: see :func:`lm_batches`."""
    return lm_batches


@pytest.fixture(scope="session")
def model_dirs(tiny_lm, tiny_lm_dir, tiny_gpt2, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model folders of three families on the tiny tokenizer: Llama (untied), Qwen2 (tied), GPT-2 (tied, Conv1D)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_lm[1]
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128,
        )
    )  # fmt: skip
    folders = {"llama": tiny_lm_dir}
    for name, model in (("qwen2", qwen), ("gpt2", tiny_gpt2)):
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.fixture(scope="session")
def texts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text(
        "".join(json.dumps({"text": line}) + "\n" for line in default_corpus(num_lines=12, seed=4))
    )
    return path
