"""The public streaming walk other packages merge with (merge-router): one key's tensors at a time."""

from __future__ import annotations

import pytest
import torch

from paperpack.core.checkpoints import LazyStateDict, load_state_dict
from paperpack.core.errors import CheckpointError
from paperpack.r_tsvm import walk_checkpoints
from paperpack.r_tsvm.lora import lora_delta_state_dict


def test_walk_checkpoints_yields_every_models_tensor_per_key(model_dirs):
    paths = [model_dirs["expert0"], model_dirs["lora"]]
    base = load_state_dict(model_dirs["base"])
    deltas = lora_delta_state_dict(model_dirs["lora"])
    expert = load_state_dict(model_dirs["expert0"])
    keys = []
    for group in walk_checkpoints(paths, base_model=model_dirs["base"]):
        keys.append(group.key)
        torch.testing.assert_close(group.base, base[group.key])
        torch.testing.assert_close(group.tensors[0], expert[group.key])
        torch.testing.assert_close(
            group.tensors[1], base[group.key] + deltas.get(group.key, 0), atol=1e-6, rtol=1e-5
        )
    assert keys == list(LazyStateDict(model_dirs["base"]))


def test_walk_checkpoints_checks_shapes_before_yielding(model_dirs, tmp_path):
    from safetensors.torch import save_file

    state = load_state_dict(model_dirs["expert0"])
    key = next(k for k in state if k.endswith("q_proj.weight"))
    state[key] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    walk = walk_checkpoints([model_dirs["expert1"], tmp_path], base_model=model_dirs["base"])
    with pytest.raises(CheckpointError, match=rf"mismatched architectures: {key!r} has shape \[3, 3\]"):
        next(walk)
