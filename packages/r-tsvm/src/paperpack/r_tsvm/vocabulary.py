"""Output vocabularies and chat templates of a merge (a recipe's ``tokenizer_source`` and ``chat_template``).

With ``tokenizer_source`` the output vocabulary is the base model's (``base``), the union of every input's
(``union``: the base tokenizer plus every token the others add), or a given model's tokenizer, and every
embedding and LM head is aligned to it by token before merging, as mergekit does: a model's row for a token it
has is its own; a model without the token gets the row of the only model that has it, else the base's row when
the base has it, else the mean of the rows of the models that have it (a zero row when none has it).

Tokens are added in the recipe's order (base first, then each model's in id order), so the output ids are
reproducible; mergekit visits the models in an unordered set, so its ids for added tokens may differ from run
to run (compare by token, not by id).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from paperpack.core.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CHATML",
    "Vocabulary",
    "align_rows",
    "build_vocabulary",
    "load_tokenizer",
    "resolve_chat_template",
]

logger = logging.getLogger(__name__)

#: The ChatML format (``<|im_start|>role\ncontent<|im_end|>\n`` per message), written for this package.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_NAMED = {"chatml": CHATML}


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved in a model folder (None when it has no tokenizer files)."""
    from transformers import AutoTokenizer

    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if not any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        return None
    return AutoTokenizer.from_pretrained(str(folder))


@dataclass
class Vocabulary:
    """The output tokenizer and, per input, where each output token's row comes from.

    Attributes:
        tokenizer: the output tokenizer (saved with the merged model).
        permutations: per input, a ``(size,)`` tensor of the input's row for each output token id (-1: the
            input lacks the token).
    """

    tokenizer: Any
    permutations: list[Tensor]

    @property
    def size(self) -> int:
        """The number of output tokens (the embeddings' rows)."""
        return int(self.permutations[0].numel())


def _copy(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)


def _usable(tokenizer: PreTrainedTokenizerBase, rows: int) -> dict[str, int]:
    """The tokenizer's tokens that have an embedding row (ids past the embedding are not usable)."""
    return {token: index for token, index in tokenizer.get_vocab().items() if index < rows}


def _union(
    base: PreTrainedTokenizerBase, others: Sequence[tuple[PreTrainedTokenizerBase, int]], rows: int
) -> Any:
    result = _copy(base)
    known = set(_usable(base, rows))
    plain: list[str] = []
    added: dict[str, Any] = {}
    for tokenizer, count in [(base, rows), *others]:
        decoder = tokenizer.added_tokens_decoder
        for token, index in sorted(_usable(tokenizer, count).items(), key=lambda item: item[1]):
            if index in decoder:
                added.setdefault(decoder[index].content, decoder[index])
            elif token not in known:
                known.add(token)
                plain.append(token)
    if plain:
        result.add_tokens(plain)
    vocabulary = result.get_vocab()
    missing = [info for content, info in added.items() if content not in vocabulary]
    if missing:
        result.add_tokens(missing)
    return result


def build_vocabulary(
    source: str, tokenizers: Sequence[PreTrainedTokenizerBase | None], rows: Sequence[int], base: int
) -> Vocabulary:
    """The output vocabulary of ``tokenizer_source`` and each input's row for every output token.

    Args:
        source: ``"base"``, ``"union"`` or the path of a model whose tokenizer is the output's.
        tokenizers: each input's tokenizer (None: the input has none, it is assumed to share the base's).
        rows: each input's number of embedding rows.
        base: the index of the base input (the first model's without a base).

    Raises:
        ConfigError: when the base, or the named source, has no tokenizer.
    """
    base_tokenizer = tokenizers[base]
    if base_tokenizer is None:
        raise ConfigError("`tokenizer_source` needs the base model's tokenizer, but its folder has none")
    if source == "base":
        output = _copy(base_tokenizer)
    elif source == "union":
        others = [
            (t, n)
            for i, (t, n) in enumerate(zip(tokenizers, rows, strict=True))
            if i != base and t is not None
        ]
        output = _union(base_tokenizer, others, rows[base])
    else:
        loaded = load_tokenizer(source)
        if loaded is None:
            raise ConfigError(f"`tokenizer_source` {source!r} has no tokenizer files")
        output = loaded
    vocabulary = output.get_vocab()
    size = len(vocabulary)
    permutations = []
    for tokenizer, count in zip(tokenizers, rows, strict=True):
        own = _usable(tokenizer if tokenizer is not None else base_tokenizer, count)
        permutation = torch.full((size,), -1, dtype=torch.long)
        for token, index in vocabulary.items():
            if token in own and index < size:
                permutation[index] = own[token]
        permutations.append(permutation)
    return Vocabulary(tokenizer=output, permutations=permutations)


def align_rows(
    tensors: Sequence[Tensor], inputs: Sequence[int], vocabulary: Vocabulary, base: int | None
) -> list[Tensor]:
    """Each tensor's rows in the output vocabulary's order, missing tokens filled (see the module docstring).

    Args:
        tensors: an embedding or LM head per input, rows indexed by the input's own token ids.
        inputs: the input index of each tensor (to find its permutation).
        vocabulary: the output vocabulary.
        base: the position in ``tensors`` of the base model's tensor, or None.
    """
    gathered, present = [], []
    for tensor, index in zip(tensors, inputs, strict=True):
        permutation = vocabulary.permutations[index].to(tensor.device)
        mask = permutation >= 0
        gathered.append(tensor[permutation.clamp(min=0)] * mask[:, None].to(tensor.dtype))
        present.append(mask)
    mask = torch.stack(present)
    count = mask.sum(dim=0)
    stacked = torch.stack([row.float() for row in gathered])
    total = stacked.sum(dim=0)
    default = total / count.clamp(min=1)[:, None]  # one model: its row; several: their mean; none: zeros
    if base is not None:
        use_base = mask[base] & (count > 1)
        default = torch.where(use_base[:, None], stacked[base], default)
    return [
        torch.where(present[i][:, None], gathered[i], default.to(gathered[i].dtype))
        for i in range(len(tensors))
    ]


def resolve_chat_template(value: str, tokenizers: Sequence[PreTrainedTokenizerBase | None]) -> str | None:
    """The chat template a recipe's ``chat_template`` names.

    ``auto`` picks the most common template among the inputs' tokenizers (the first in the recipe's order on
    a tie; None, with a warning, when none has one), ``chatml`` gives :data:`CHATML`, and anything else is a
    Jinja template given in full.
    """
    if value != "auto":
        return _NAMED.get(value, value)
    templates = []
    for tokenizer in tokenizers:
        template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if isinstance(template, dict):
            template = template.get("default")
        if template:
            templates.append(template.strip())
    if not templates:
        logger.warning("chat_template: auto, but no input has a chat template: none is set")
        return None
    counts = Counter(templates)
    best = max(counts.values())
    chosen: str = next(template for template in templates if counts[template] == best)
    return chosen
