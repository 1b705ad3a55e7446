"""Session-scoped model folders: a tiny Llama (untied head) and a tiny GPT-2 (tied head), each with a base and
three "experts" (the base plus seeded perturbations: compiling is arithmetic on weights, trained experts add
nothing here but time; the demo trains real ones), and the prompts of three tasks with distinct formats.

The perturbations agree in sign in the first decoder block (a shared direction plus small noise) and disagree
in the last (independent noise only), so the last block conflicts most under every measure.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

TASKS = ("sort", "reverse", "count")


def task_prompts(count: int = 6) -> dict[str, list[str]]:
    """Prompts whose formats differ by task: each task has its own marker words."""
    return {
        "sort": [f"sort the digits {i} {i + 3} {i + 1} into order" for i in range(count)],
        "reverse": [f"reverse this word list: apple {i} pear {i} plum" for i in range(count)],
        "count": [f"how many times does {i} occur in {i} {i} {i}?" for i in range(count)],
    }


def make_experts(model: torch.nn.Module, count: int = 3) -> list[torch.nn.Module]:
    """``count`` perturbed copies: block 0 shares one direction, the last block is independent noise."""
    shared = torch.Generator().manual_seed(100)
    directions = {name: torch.randn(p.shape, generator=shared) for name, p in model.named_parameters()}
    experts = []
    for index in range(count):
        expert = copy.deepcopy(model)
        g = torch.Generator().manual_seed(index + 1)
        with torch.no_grad():
            for name, param in expert.named_parameters():
                noise = torch.randn(param.shape, generator=g)
                if ".0." in name:
                    param.add_(0.02 * directions[name] + 0.002 * noise)
                else:
                    param.add_(0.02 * noise)
        experts.append(expert)
    return experts


def save_family(model, tokenizer, root: Path) -> dict[str, Path]:
    dirs = {"base": root / "base"}
    model.save_pretrained(dirs["base"])
    tokenizer.save_pretrained(dirs["base"])
    for task, expert in zip(TASKS, make_experts(model), strict=True):
        dirs[task] = root / task
        expert.save_pretrained(dirs[task])
        tokenizer.save_pretrained(dirs[task])
    return dirs


@pytest.fixture(scope="session")
def llama_dirs(tiny_lm, tmp_path_factory) -> dict[str, Path]:
    """``base`` and one folder per task in TASKS, tiny Llama (untied LM head)."""
    model, tokenizer = tiny_lm
    return save_family(model, tokenizer, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def gpt2_dirs(tiny_lm, tmp_path_factory) -> dict[str, Path]:
    """The same with a tiny GPT-2 (tied LM head) built from a config, on tiny_lm's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny_lm
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    return save_family(model, tokenizer, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def prompts() -> dict[str, list[str]]:
    return task_prompts()
