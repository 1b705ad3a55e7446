"""Session-scoped model folders for the checkpoint tests: a tiny base, three fine-tunes and a LoRA adapter.

The "fine-tunes" are the base plus seeded random perturbations: merging is arithmetic on weights, so trained
experts add nothing here but time (the demo trains real ones).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch


def perturbed(model, seed, scale=0.02):
    expert = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in expert.parameters():
            param.add_(scale * torch.randn(param.shape, generator=g))
    return expert


@pytest.fixture(autouse=True)
def single_thread():
    """Run each test on one intra-op thread.

    The tests' matrices are tiny; on a shared 2-core CI runner, OpenMP threads spinning against other jobs make a
    64x256 SVD 50 times slower than on one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_dirs(tiny_lm, tmp_path_factory) -> dict[str, Path]:
    """``base`` (one file), ``expert0..2`` (sharded) and ``lora`` (a PEFT adapter on the base)."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_lm
    root = tmp_path_factory.mktemp("models")
    dirs = {"base": root / "base"}
    model.save_pretrained(dirs["base"])
    tokenizer.save_pretrained(dirs["base"])
    for index in range(3):
        dirs[f"expert{index}"] = root / f"expert{index}"
        perturbed(model, index + 1).save_pretrained(dirs[f"expert{index}"], max_shard_size="300KB")
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "up_proj"],
        rank_pattern={"up_proj": 2},
        alpha_pattern={"up_proj": 6},
        init_lora_weights=False,
    )
    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    dirs["lora"] = root / "lora"
    peft_model.save_pretrained(dirs["lora"])
    return dirs
