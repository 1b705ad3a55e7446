"""Data collators that apply MEAP to batches for ``transformers.Trainer`` and ``trl.SFTTrainer``.

Both pad with TRL's ``DataCollatorForLanguageModeling`` (dynamic right padding, ``-100`` labels on padding,
optional padding-free output with ``position_ids``), so a MEAP batch has exactly the keys and label counts of
the batch TRL would build: the Trainer's loss normalisation over gradient accumulation (``num_items_in_batch``
counts the ``labels`` that are not ``-100``) stays correct. Packed rows (a ``seq_lengths`` column, as TRL's
packing writes) and padding-free batches are masked per original sequence.

Token lists become numpy arrays once, on the way in (``torch.tensor`` of a Python list is about eight times
slower than ``numpy.asarray``, and TRL converts what it is given); the masks are drawn for the whole batch at
once and the SFT copies are built with tensor operations, without Python loops over tokens or sequences.

Randomness (ours; the official code draws from a global stream): the masks of a batch are drawn from a
generator seeded by ``config.seed``, the process rank, the collator's epoch and a digest of the batch's
tokens. A collator keeps no random state, so a run resumed from a checkpoint, a run with any number of
data-loader workers and a rerun all draw the same masks for the same batches, and every rank draws its own.
The epoch is what makes a batch that comes back in a later epoch (always, at one example per batch) get new
masks: ``set_epoch`` sets it, and :class:`~paperpack.meap.MEAPEpochCallback` calls it at the start of every
``Trainer`` epoch. Without it the epoch stays 0 and a repeated batch gets its earlier masks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from paperpack.core.data import IGNORE_INDEX
from paperpack.core.distributed import rank
from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int
from paperpack.meap.config import MEAPConfig
from paperpack.meap.masking import sample_mask
from paperpack.meap.tokens import mask_token_id

__all__ = ["MEAPCollator", "MEAPSFTCollator"]


class _MEAPBase:
    """Shared plumbing: the mask token, the special ids, TRL padding and the per-batch random stream."""

    def __init__(
        self,
        tokenizer: Any,
        config: MEAPConfig | None = None,
        *,
        padding_free: bool = False,
        pad_to_multiple_of: int | None = None,
        return_position_ids: bool = False,
    ) -> None:
        config = MEAPConfig() if config is None else config
        if not isinstance(config, MEAPConfig):
            raise TypeError(f"`config` must be a MEAPConfig, got {type(config).__name__}")
        self.config = config
        self.mask_token_id = mask_token_id(tokenizer, config.mask_token)
        pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        if pad_token_id is None:
            raise ConfigError("the tokenizer has neither a pad token nor an EOS token to pad with")
        self.pad_token_id = int(pad_token_id)
        self.padding_free = bool(padding_free)
        # TRL is imported here, not at module top, so that `import paperpack.meap` stays light.
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self._pad = DataCollatorForLanguageModeling(
            pad_token_id=self.pad_token_id,
            padding_free=self.padding_free,
            return_position_ids=return_position_ids,
            pad_to_multiple_of=pad_to_multiple_of,
        )
        self.special_token_ids = torch.tensor(sorted(set(tokenizer.all_special_ids) | {self.mask_token_id}))
        self.epoch = 0
        """The epoch the masks are drawn for (part of every batch's seed); see :meth:`set_epoch`."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(config={self.config!r}, mask_token_id={self.mask_token_id}, "
            f"pad_token_id={self.pad_token_id}, padding_free={self.padding_free}, epoch={self.epoch})"
        )

    def set_epoch(self, epoch: int) -> None:
        """Draw the masks of the following batches for ``epoch``, so a batch seen again gets new masks.

        :class:`~paperpack.meap.MEAPEpochCallback` calls it at the start of every ``Trainer`` epoch (resumed
        runs included); call it yourself in a loop of your own. Data-loader workers take a copy of the
        collator when an epoch's iterator starts, so they see the new epoch unless they are persistent.

        Raises:
            ConfigError: when ``epoch`` is not an integer >= 0.
        """
        check_int("epoch", epoch, minimum=0)
        self.epoch = epoch

    def _generator(self, examples: Sequence[Mapping[str, Any]]) -> torch.Generator:
        """The batch's random stream, seeded from (seed, rank, epoch, the batch's tokens and lengths)."""
        digest = hashlib.blake2b(digest_size=16)
        for example in examples:
            digest.update(np.asarray(example.get("seq_lengths", ()), dtype=np.int64).tobytes())
            digest.update(example["input_ids"].tobytes())
            digest.update(b"|")
        words = np.frombuffer(digest.digest(), dtype=np.uint32).tolist()
        entropy = [self.config.seed, rank(), self.epoch, *words]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    def _check_examples(self, examples: Sequence[Mapping[str, Any]], *, labels: bool) -> None:
        if not isinstance(examples, Sequence) or isinstance(examples, str | bytes) or not examples:
            raise ConfigError(f"`examples` must be a non-empty list of dicts, got {examples!r:.80}")
        for index, example in enumerate(examples):
            if not isinstance(example, Mapping) or "input_ids" not in example:
                raise ConfigError(f"`examples[{index}]` must be a dict with 'input_ids', got {example!r:.60}")
            if labels and "labels" not in example:
                raise ConfigError(
                    f"`examples[{index}]` has no 'labels': MEAPSFTCollator finds the answer span from the "
                    "labels "
                    "that trl.SFTTrainer builds (completion_only_loss / assistant_only_loss); got keys "
                    f"{sorted(example)}"
                )
            for key in ("labels", "attention_mask"):
                if key in example and len(example[key]) != len(example["input_ids"]):
                    raise ConfigError(
                        f"`examples[{index}]` has {len(example[key])} {key} for "
                        f"{len(example['input_ids'])} input_ids"
                    )

    def _is_special(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(input_ids, self.special_token_ids)


def _token_array(value: Any, name: str) -> np.ndarray[Any, np.dtype[np.int64]]:
    """A non-empty 1-D int64 array of token ids from a list, numpy array or CPU tensor (arrays not copied)."""
    array = np.asarray(value)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
        raise ConfigError(
            f"`{name}` must be a non-empty 1-D sequence of integer token ids, got {array.dtype} with shape "
            f"{array.shape}"
        )
    return array.astype(np.int64, copy=False)


def _normalized(examples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The examples as TRL's padding reads them: int64 arrays, no pre-padding, ``seq_lengths`` all-or-none.

    Positions with ``attention_mask == 0`` are removed (the batch is re-padded dynamically). When any example
    has ``seq_lengths``, the others get one sequence each: TRL's collator reads the column from all or none.
    Other keys are dropped (TRL's padding ignores them).
    """
    out: list[dict[str, Any]] = []
    packed = any("seq_lengths" in example for example in examples)
    for index, example in enumerate(examples):
        current: dict[str, Any] = {
            key: _token_array(example[key], f"examples[{index}]['{key}']")
            for key in ("input_ids", "labels")
            if key in example
        }
        attention = example.get("attention_mask")
        if attention is not None:
            keep = np.asarray(attention) != 0
            if not keep.all():
                current = {key: value[keep] for key, value in current.items()}
        if packed:
            size = int(current["input_ids"].size)
            lengths = example.get("seq_lengths")
            current["seq_lengths"] = [size] if lengths is None else [int(n) for n in lengths]
            if sum(current["seq_lengths"]) != size or min(current["seq_lengths"]) < 1:
                raise ConfigError(
                    f"`examples[{index}]['seq_lengths']` must be positive and sum to the row's {size} "
                    f"tokens, got {current['seq_lengths']}"
                )
        out.append(current)
    return out


def _segment_ids(lengths: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """Segment ids ``(rows, width)`` from per-row sequence lengths: 0, 1, … per sequence, -1 on padding."""
    per_row = torch.tensor([len(row) for row in lengths])
    sizes = torch.tensor([size for row in lengths for size in row], dtype=torch.long)
    # The index of every sequence within its row, repeated over its tokens: all rows' tokens, in order.
    first = torch.cumsum(per_row, 0) - per_row
    local = torch.arange(sizes.numel()) - torch.repeat_interleave(first, per_row)
    tokens = torch.repeat_interleave(local, sizes)
    totals = torch.tensor([sum(row) for row in lengths])
    real = torch.arange(width).unsqueeze(0) < totals.unsqueeze(1)
    return torch.full((len(lengths), width), -1, dtype=torch.long).masked_scatter_(real, tokens)


def _padded(arrays: Sequence[np.ndarray[Any, Any]], value: int) -> torch.Tensor:
    """Right-pad 1-D arrays into one ``(rows, longest)`` tensor."""
    lengths = torch.tensor([array.size for array in arrays])
    real = torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)
    flat = torch.from_numpy(np.concatenate(arrays))
    return torch.full(real.shape, value, dtype=torch.long).masked_scatter_(real, flat)


class MEAPCollator(_MEAPBase):
    """Collator for causal-LM pretraining with MEAP (arXiv:2502.07490, §3).

    Pads a list of tokenized examples like TRL's ``DataCollatorForLanguageModeling`` (labels = the unmasked
    ``input_ids``, ``-100`` on padding), then replaces ``⌊P·E⌋`` of the ``E`` eligible input positions of
    every sequence with ``[MASK]`` (``P = config.mask_ratio``; ``max(1, ⌊P·E⌋)`` with
    ``config.mask_count="at_least_one"``). Padding, special tokens and the last two positions of each
    sequence are never masked (the last has no target; the official code never masks the last position that
    has one); the labels are never changed, so the loss is the plain next-token loss on the original tokens
    over all positions, as in the official code.

    Examples may carry ``labels`` (used as they are), an ``attention_mask`` (zeros mark pre-padding, which is
    dropped and re-padded), and for packed rows ``seq_lengths`` (as TRL's packing writes; pass
    ``remove_unused_columns=False`` to the Trainer so that the column survives). The masks are a function of
    ``config.seed``, the process rank, the epoch (:meth:`set_epoch`; pass
    ``MEAPEpochCallback(collator)`` to the Trainer) and the batch's tokens, so a resumed run draws the same
    masks as an uninterrupted one and a batch seen again in a later epoch gets new ones.

    Args:
        tokenizer: the tokenizer; it must hold ``config.mask_token`` (see :func:`add_mask_token`).
        config: the MEAP configuration (default ``MEAPConfig()``).
        padding_free: flatten the batch into one row with ``position_ids`` (TRL's padding-free format).
        pad_to_multiple_of: pad the length to a multiple of this.
        return_position_ids: also return ``position_ids`` in the padded format.

    Examples:
        >>> import torch
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.meap import MEAPCollator, MEAPConfig, add_mask_token
        >>> model, tokenizer = tiny_causal_lm()
        >>> mask_id = add_mask_token(tokenizer, model)
        >>> collator = MEAPCollator(tokenizer, MEAPConfig(mask_ratio=0.15))
        >>> batch = collator([{"input_ids": list(range(10, 51))}, {"input_ids": list(range(10, 31))}])
        >>> int((batch["input_ids"] == mask_id).sum(dim=1)[0])  # ⌊0.15 · 39⌋
        5
        >>> bool((batch["labels"][0] == torch.arange(10, 51)).all())
        True
    """

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate and mask a list of examples; returns ``input_ids``, ``labels`` and the padding keys."""
        self._check_examples(examples, labels=False)
        examples = _normalized(examples)
        batch: dict[str, Any] = self._pad(examples)
        input_ids: torch.Tensor = batch["input_ids"]
        width = input_ids.shape[1]
        protected = self._is_special(input_ids)
        if "attention_mask" in batch:
            protected |= batch["attention_mask"] == 0
        if self.padding_free:
            real = sum(len(example["input_ids"]) for example in examples)
            protected[:, real:] = True
            segments = torch.cumsum(batch["position_ids"] == 0, dim=1)
        else:
            lengths = [example.get("seq_lengths", [example["input_ids"].size]) for example in examples]
            segments = _segment_ids(lengths, width)
        mask = sample_mask(
            input_ids,
            ratio=self.config.mask_ratio,
            generator=self._generator(examples),
            protected=protected,
            segment_ids=segments,
            per_row_positions=self.config.per_row_positions,
            at_least_one=self.config.mask_count == "at_least_one",
        )
        batch["input_ids"] = input_ids.masked_fill(mask, self.mask_token_id)
        return batch


class MEAPSFTCollator(_MEAPBase):
    """Collator for ``trl.SFTTrainer`` that adds MEAP's masked copies of the answers (arXiv:2502.07490, §3).

    The answer span is where the labels that ``SFTTrainer`` builds are not ``-100`` (``completion_only_loss``
    for prompt-completion data, ``assistant_only_loss`` for conversations), minus special tokens. For every
    sequence whose answer has at least ``config.min_answer_tokens`` tokens, ``⌊r·E⌋`` of its ``E`` eligible
    answer positions are masked (``r = config.sft_mask_ratio``; the prompt is never masked), and the masked
    copy joins the batch:

    - ``sft_layout="separate"`` (official code): the masked copy is an extra row whose labels are ``-100``
      except at the masked positions (which keep their original token). The clean row is unchanged.
    - ``sft_layout="concat"`` (the paper's description): the masked copy is appended to its clean sequence,
      ``[clean ; masked]``, with loss on the clean answer and on the masked positions; positions continue,
      so the sequence length doubles (halve ``max_length``).

    Short answers get plain next-token prediction. Packed rows (``seq_lengths``) are handled per sequence.
    ``SFTTrainer`` refuses a custom collator when padding-free (e.g. ``packing=True`` with the default BFD
    strategy); assign one afterwards: ``trainer.data_collator = MEAPSFTCollator(tok, cfg,
    padding_free=True)``.

    Args:
        tokenizer: the tokenizer; it must hold ``config.mask_token`` (see :func:`add_mask_token`).
        config: the MEAP configuration (default ``MEAPConfig()``).
        padding_free: flatten the batch into one row with ``position_ids`` (TRL's padding-free format).
        pad_to_multiple_of: pad the length to a multiple of this.
        return_position_ids: also return ``position_ids`` in the padded format.

    Examples:
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.meap import MEAPConfig, MEAPSFTCollator, add_mask_token
        >>> model, tokenizer = tiny_causal_lm()
        >>> mask_id = add_mask_token(tokenizer, model)
        >>> collator = MEAPSFTCollator(tokenizer, MEAPConfig(sft_mask_ratio=0.5, min_answer_tokens=4))
        >>> example = {"input_ids": list(range(10, 20)), "labels": [-100] * 4 + list(range(14, 20))}
        >>> batch = collator([example])
        >>> batch["input_ids"].shape[0]  # the clean row and its masked copy
        2
        >>> int((batch["input_ids"][1] == mask_id).sum())  # ⌊0.5 · 5⌋: the answer's last token is kept
        2
    """

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Collate a list of SFT examples and add the masked copies; returns the padded batch."""
        self._check_examples(examples, labels=True)
        normalized = _normalized(examples)
        packed = "seq_lengths" in normalized[0]
        lengths = [example.get("seq_lengths", [example["input_ids"].size]) for example in normalized]
        input_ids = _padded([example["input_ids"] for example in normalized], self.pad_token_id)
        labels = _padded([example["labels"] for example in normalized], IGNORE_INDEX)
        segments = _segment_ids(lengths, input_ids.shape[1])

        answer = (labels != IGNORE_INDEX) & ~self._is_special(input_ids) & (segments >= 0)
        # Answers shorter than min_answer_tokens keep plain NTP: count answer tokens per sequence.
        starts = torch.ones_like(answer)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
        sequence = torch.cumsum(starts.reshape(-1), 0) - 1
        answer_count = torch.zeros(int(sequence[-1]) + 1, dtype=torch.long)
        answer_count.scatter_add_(0, sequence, answer.reshape(-1).long())
        long_enough = (answer_count >= self.config.min_answer_tokens).index_select(0, sequence)
        long_enough = long_enough.reshape(answer.shape)

        mask = sample_mask(
            input_ids,
            ratio=self.config.sft_mask_ratio,
            generator=self._generator(normalized),
            protected=~(answer & long_enough),
            segment_ids=segments,
            per_row_positions=self.config.per_row_positions,
            # The official SFT code samples from every answer position; only a final position (EOS, or the
            # last token of a truncated answer) has no target.
            keep_last=1,
            at_least_one=self.config.mask_count == "at_least_one",
        )
        masked_ids = input_ids.masked_fill(mask, self.mask_token_id)
        masked_labels = labels.masked_fill(~mask, IGNORE_INDEX)
        if self.config.sft_layout == "separate":
            # The clean rows as they came, then a masked copy of every row that has masks.
            copies = mask.any(dim=1).nonzero().squeeze(1).tolist()
            rows = normalized + [
                _row(masked_ids[row], masked_labels[row], lengths[row], packed=packed) for row in copies
            ]
        else:
            rows = _concatenated(
                (input_ids, labels),
                (masked_ids, masked_labels),
                mask,
                starts=starts,
                sequence=sequence,
                lengths=lengths,
                packed=packed,
            )
        return dict(self._pad(rows))


def _row(
    input_ids: torch.Tensor, labels: torch.Tensor, seq_lengths: list[int], *, packed: bool
) -> dict[str, Any]:
    """One example for TRL's padding: the first ``sum(seq_lengths)`` tokens of a padded row, as arrays."""
    size = sum(seq_lengths)
    row: dict[str, Any] = {"input_ids": input_ids[:size].numpy(), "labels": labels[:size].numpy()}
    if packed:
        row["seq_lengths"] = seq_lengths
    return row


def _concatenated(
    clean: tuple[torch.Tensor, torch.Tensor],
    masked: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
    *,
    starts: torch.Tensor,
    sequence: torch.Tensor,
    lengths: list[list[int]],
    packed: bool,
) -> list[dict[str, Any]]:
    """Rows where every sequence that has masks is followed by its masked copy, ``[clean ; masked]``.

    ``starts`` marks the first token of every sequence (padding is a run of its own, never masked) and
    ``sequence`` numbers the sequences over the flattened batch. Every token moves right by the lengths of the
    copies inserted before its sequence in its row; a copy's token lands one sequence length after its clean
    token. Both are scattered into ``(rows, 2 · width)``.
    """
    rows, width = mask.shape
    size = torch.bincount(sequence)
    doubled = torch.zeros_like(size).scatter_add_(0, sequence, mask.reshape(-1).long()) > 0
    extra = (size * doubled).index_select(0, sequence).reshape(rows, width)
    # Inclusive running sum over the row of the copies' lengths, counted at each sequence's first token.
    inserted = torch.cumsum(extra * starts, dim=1)
    columns = torch.arange(width).unsqueeze(0)
    destination = columns + inserted - extra
    # Tokens without a copy send it to a spare last column, which no row reads.
    length = size.index_select(0, sequence).reshape(rows, width)
    copy_destination = torch.where(extra > 0, destination + length, 2 * width)
    input_ids, labels = (
        torch.full((rows, 2 * width + 1), fill, dtype=torch.long)
        .scatter_(1, destination, clean_part)
        .scatter_(1, copy_destination, masked_part)
        for clean_part, masked_part, fill in ((clean[0], masked[0], 0), (clean[1], masked[1], IGNORE_INDEX))
    )
    doubled_list = doubled.tolist()
    first_sequence = sequence.reshape(rows, width)[:, 0].tolist()
    result = []
    for row, row_lengths in enumerate(lengths):
        new_lengths = [
            n * (2 if doubled_list[first_sequence[row] + j] else 1) for j, n in enumerate(row_lengths)
        ]
        result.append(_row(input_ids[row], labels[row], new_lengths, packed=packed))
    return result
