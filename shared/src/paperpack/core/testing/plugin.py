"""The pytest plugin every paperpack test run loads (the workspace's root ``conftest.py`` names it).

It registers the ``gpu`` and ``slow`` markers, skips ``gpu`` tests with a clear reason when CUDA is absent,
keeps the Hugging Face libraries offline, and provides session-scoped fixtures: a tiny model (``tiny_lm``,
``tiny_lm_dir``; ``tiny_gpt2_dir`` and ``tiny_qwen2_dir``, other architectures) and tiny data for it
(``tiny_texts``, ``tiny_lm_dataset`` with ``tiny_collator``, ``tiny_text_dataset``,
``tiny_prompt_completion_dataset``; see :mod:`paperpack.core.testing.data`).

Outside this workspace, enable it with ``pytest_plugins = ["paperpack.core.testing.plugin"]`` in a
root ``conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from paperpack.core.data import CausalLMCollator

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Set at import, before any test module imports huggingface_hub (which reads these once).
for _name, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_name, _value)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers, so that ``--strict-markers`` accepts them in any project."""
    config.addinivalue_line("markers", "gpu: needs a CUDA device; run by the nox gpu sessions")
    config.addinivalue_line("markers", "slow: takes more than a few seconds; still part of the default run")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests, with the reason, when no CUDA device is available."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_lm() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A session-scoped ``tiny_causal_lm()``; ``copy.deepcopy`` the model before training it."""
    from paperpack.core.hf import tiny_causal_lm

    return tiny_causal_lm()


@pytest.fixture(scope="session")
def tiny_lm_dir(
    tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model folder holding ``tiny_lm`` (safetensors weights, config and tokenizer); treat it read-only."""
    model, tokenizer = tiny_lm
    folder = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(
    tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A GPT-2 model folder with ``tiny_lm``'s tokenizer, for commands that take any model folder.

    A second architecture: 2 layers, tied embeddings, ``Conv1D`` weights, learned positions up to 128, built
    from a config; treat it read-only.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_lm[1]
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen2_dir(
    tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A Qwen2 model folder with ``tiny_lm``'s tokenizer and chat template, for commands that take any folder.

    A third architecture: 2 layers, tied embeddings, q/k/v biases, grouped-query attention (4 heads, 2
    key-value heads), positions up to 512, the tokenizer's special token ids, built from a config; treat it
    read-only.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_lm[1]
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny_qwen2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    """32 short lines of the built-in corpus, of varied lengths."""
    from paperpack.core.testing import data

    return data.tiny_texts()


@pytest.fixture(scope="session")
def tiny_lm_dataset(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> Dataset:
    """``tiny_texts`` tokenized by ``tiny_lm``'s tokenizer (<= 24 tokens, unpadded): a Trainer dataset."""
    from paperpack.core.testing import data

    return data.tiny_lm_dataset(tiny_lm[1])


@pytest.fixture(scope="session")
def tiny_collator(tiny_lm: tuple[LlamaForCausalLM, PreTrainedTokenizerFast]) -> CausalLMCollator:
    """A :class:`~paperpack.core.data.CausalLMCollator` for ``tiny_lm``: pads, labels -100 on padding."""
    from paperpack.core.data import CausalLMCollator

    return CausalLMCollator(tiny_lm[1])


@pytest.fixture(scope="session")
def tiny_text_dataset() -> Dataset:
    """``tiny_texts`` as a TRL language-modeling dataset (a ``text`` column)."""
    from paperpack.core.testing import data

    return data.tiny_text_dataset()


@pytest.fixture(scope="session")
def tiny_prompt_completion_dataset() -> Dataset:
    """32 additions as a TRL prompt-completion dataset (``prompt``, ``completion``)."""
    from paperpack.core.testing import data

    return data.tiny_prompt_completion_dataset()


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The offline environment variables, for tests that start subprocesses."""
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)
