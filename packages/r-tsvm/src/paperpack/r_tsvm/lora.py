"""PEFT LoRA adapter folders read as dense deltas, so adapters merge as full task vectors.

A LoRA adapter changes a weight by ΔW = s · B A (s = lora_alpha / r, or lora_alpha / √r with rsLoRA;
per-module r and alpha from ``rank_pattern`` / ``alpha_pattern``). Merging the A and B factors separately is
wrong: the cross terms B_i A_j are lost or invented (peft issue #3004). We always materialise ΔW and merge
task vectors.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from paperpack.core.checkpoints import LazyStateDict, PathLike
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["LoraAdapter", "is_lora_adapter", "lora_delta_state_dict"]

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."
_UNSUPPORTED = ("use_dora", "lora_bias")


def is_lora_adapter(path: PathLike) -> bool:
    """Whether ``path`` is a PEFT adapter folder (it holds ``adapter_config.json``)."""
    return Path(path).is_dir() and (Path(path) / ADAPTER_CONFIG).is_file()


@dataclass(frozen=True)
class _Factors:
    a_key: str
    b_key: str
    scale: float
    embedding: bool


class LoraAdapter:
    """A PEFT LoRA adapter folder, read lazily as dense per-weight deltas ΔW = s · B A.

    Keys are those of the base model (``model.layers.0.self_attn.q_proj.weight``). Tensors the adapter
    stores in full (``modules_to_save``, trained biases, a resized embedding's ``base_layer``) replace the
    base's.

    Args:
        path: the adapter folder (``adapter_config.json`` and ``adapter_model.safetensors``).
        device: where the factors are read to.

    Raises:
        CheckpointNotFoundError: when the folder or its files are missing.
        CheckpointError: for a non-LoRA adapter, DoRA, LoRA biases or keys it cannot place.

    Examples:
        >>> adapter = LoraAdapter("path/to/adapter")  # doctest: +SKIP
        >>> adapter.delta("model.layers.0.self_attn.q_proj.weight").shape  # doctest: +SKIP
        torch.Size([64, 64])
    """

    def __init__(self, path: PathLike, *, device: str | torch.device = "cpu") -> None:
        from peft import LoraConfig
        from peft.utils.other import get_pattern_key

        self.path = Path(path)
        if not is_lora_adapter(self.path):
            raise CheckpointNotFoundError(f"{self.path} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
        raw = json.loads((self.path / ADAPTER_CONFIG).read_text())
        if raw.get("peft_type") != "LORA":
            raise CheckpointError(
                f"{self.path} holds a {raw.get('peft_type')!r} adapter; only LoRA adapters can be merged as "
                "deltas"
            )
        for option in _UNSUPPORTED:
            if raw.get(option):
                raise CheckpointError(
                    f"{self.path} uses `{option}`, which is not supported: merge it into its base with "
                    "`PeftModel.merge_and_unload()` and pass the merged model folder instead"
                )
        self.config = LoraConfig.from_pretrained(str(self.path))
        self.state = LazyStateDict(self.path, device=device)
        self._factors: dict[str, _Factors] = {}
        self._full: dict[str, str] = {}
        pairs: dict[str, dict[str, str]] = {}
        for stored in self.state:
            key = stored.removeprefix(_PREFIX)
            for suffix, part in (
                (".lora_A.weight", "A"),
                (".lora_B.weight", "B"),
                (".lora_embedding_A", "eA"),
                (".lora_embedding_B", "eB"),
            ):
                if key.endswith(suffix):
                    pairs.setdefault(key.removesuffix(suffix), {})[part] = stored
                    break
            else:
                if ".lora_" in key:
                    raise CheckpointError(
                        f"{self.path} holds {stored!r}, a LoRA tensor this reader cannot place"
                    )
                self._full[key.replace(".base_layer.", ".")] = stored
        for module, parts in pairs.items():
            embedding = "eA" in parts or "eB" in parts
            a_key, b_key = parts.get("eA" if embedding else "A"), parts.get("eB" if embedding else "B")
            if a_key is None or b_key is None:
                raise CheckpointError(f"{self.path} has only one of the two LoRA factors of {module!r}")
            rank = self.config.rank_pattern.get(
                get_pattern_key(self.config.rank_pattern, module), self.config.r
            )
            alpha = self.config.alpha_pattern.get(
                get_pattern_key(self.config.alpha_pattern, module), self.config.lora_alpha
            )
            scale = alpha / math.sqrt(rank) if self.config.use_rslora else alpha / rank
            self._factors[f"{module}.weight"] = _Factors(a_key, b_key, scale, embedding)

    @property
    def delta_keys(self) -> list[str]:
        """The base-model keys this adapter has LoRA factors for, sorted."""
        return sorted(self._factors)

    @property
    def keys(self) -> set[str]:
        """The base-model keys this adapter changes (by a delta or a full tensor)."""
        return set(self._factors) | set(self._full)

    def delta_shape(self, key: str) -> tuple[int, ...] | None:
        """The shape of ΔW for ``key`` from the headers, or None when the adapter has no factors for it."""
        factors = self._factors.get(key)
        if factors is None:
            return None
        rows, cols = self.state.shape(factors.b_key)[0], self.state.shape(factors.a_key)[1]
        if factors.embedding:
            return (cols, rows)
        return (cols, rows) if self.config.fan_in_fan_out else (rows, cols)

    def full_shape(self, key: str) -> tuple[int, ...] | None:
        """The shape of the tensor the adapter stores in full for ``key``, or None."""
        stored = self._full.get(key)
        return None if stored is None else self.state.shape(stored)

    def delta(self, key: str) -> Tensor | None:
        """ΔW = s · B A for ``key`` in float32 (transposed for embeddings and ``fan_in_fan_out``), or None."""
        factors = self._factors.get(key)
        if factors is None:
            return None
        a = self.state[factors.a_key].to(torch.float32)
        b = self.state[factors.b_key].to(torch.float32)
        delta = (b @ a) * factors.scale
        return delta.T if factors.embedding or self.config.fan_in_fan_out else delta

    def tensor(self, key: str, base: Tensor) -> Tensor:
        """The adapted model's tensor for ``key``: the stored or base tensor plus ΔW (float32 if changed)."""
        stored = self._full.get(key)
        weight = self.state[stored] if stored is not None else base
        delta = self.delta(key)
        if delta is None:
            return weight
        if tuple(delta.shape) != tuple(weight.shape):
            raise CheckpointError(
                f"the LoRA delta of {key!r} in {self.path} has shape {list(delta.shape)}, "
                f"but the weight has {list(weight.shape)}"
            )
        return weight.to(torch.float32) + delta


def lora_delta_state_dict(path: PathLike) -> dict[str, Tensor]:
    """The dense deltas ΔW = s · B A of a LoRA adapter folder, keyed by the base model's weight names.

    Tensors the adapter stores in full (``modules_to_save``) are not deltas and are left out.

    Examples:
        >>> deltas = lora_delta_state_dict("path/to/adapter")  # doctest: +SKIP
    """
    adapter = LoraAdapter(path)
    deltas = {}
    for key in adapter.delta_keys:
        delta = adapter.delta(key)
        if delta is not None:
            deltas[key] = delta
    return deltas
