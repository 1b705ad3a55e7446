"""Units: the groups of parameters that are averaged or routed as a whole (decoder blocks or modules).

A decoder block is a key's prefix up to its first numbered component (``model.layers.3`` for Llama and Qwen2,
``transformer.h.3`` for GPT-2), so any standard architecture is covered without a table of names. Keys outside
the blocks (embeddings, the final norm, the LM head) form one unit per module. A module is a key without its
last component (``model.layers.3.self_attn.q_proj``).
"""

from __future__ import annotations

import re

from paperpack.merge_router.config import Unit

__all__ = ["in_block", "module_of", "unit_of"]

_NUMBERED = re.compile(r"^(.*?\.\d+)(\.|$)")


def module_of(key: str) -> str:
    """The module a parameter belongs to: the key without its last component (the key if it has none).

    Examples:
        >>> module_of("model.layers.3.self_attn.q_proj.weight")
        'model.layers.3.self_attn.q_proj'
    """
    return key.rsplit(".", 1)[0] if "." in key else key


def in_block(key: str) -> bool:
    """Whether a parameter (or a unit) lies inside a decoder block: its name has a numbered component.

    Examples:
        >>> in_block("model.layers.3.mlp.up_proj.weight"), in_block("model.layers.3"), in_block("model.norm")
        (True, True, False)
    """
    return _NUMBERED.match(key) is not None


def unit_of(key: str, unit: Unit = "decoder_block") -> str:
    """The unit of a parameter: its decoder block (or, outside the blocks, its module), or its module.

    Examples:
        >>> unit_of("model.layers.3.mlp.up_proj.weight")
        'model.layers.3'
        >>> unit_of("transformer.h.0.attn.c_attn.bias")
        'transformer.h.0'
        >>> unit_of("model.embed_tokens.weight")
        'model.embed_tokens'
        >>> unit_of("model.layers.3.mlp.up_proj.weight", "module")
        'model.layers.3.mlp.up_proj'
    """
    if unit == "decoder_block":
        match = _NUMBERED.match(key)
        if match:
            return match.group(1)
    return module_of(key)
