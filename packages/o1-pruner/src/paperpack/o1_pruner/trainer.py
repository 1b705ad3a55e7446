"""``O1PrunerTrainer``: the offline O1-Pruner training stage as a ``transformers.Trainer``."""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer

from paperpack.core.errors import ConfigError
from paperpack.core.hf import context_length
from paperpack.o1_pruner.collator import O1PrunerCollator
from paperpack.o1_pruner.config import O1PrunerConfig
from paperpack.o1_pruner.loss import o1_pruner_loss, sequence_mean, token_log_probs

__all__ = ["O1PrunerTrainer"]

logger = logging.getLogger(__name__)

_COLUMNS = ["prompt_ids", "completion_ids", "weight", "ref_logps"]


class O1PrunerTrainer(Trainer):
    r"""Fine-tune on pre-sampled, weighted samples with O1-Pruner's PPO-clip loss against a frozen reference.

    Each batch holds samples y drawn from the reference π_ref (by :func:`~paperpack.o1_pruner.presample`) with
    their weights w. The loss is :func:`~paperpack.o1_pruner.o1_pruner_loss`: ℓ = max(−w·r, −w·clip(r, 1−ε,
    1+ε)) with r the ratio of the length-normalized sequence probabilities under the model and the reference
    (``ratio_level="sequence_mean"``, the official code) or one ratio per token (``"token"``), averaged over
    every sample of the optimizer step: over gradient accumulation's micro-batches and over data-parallel
    ranks alike, so accumulating k micro-batches equals one k times larger batch.

    The reference is, in order:

    - the reference's log-probabilities stored with the samples (a ``ref_logps`` column, what
      :func:`~paperpack.o1_pruner.presample` writes with ``store_ref_logps``): no reference pass at all;
    - ``ref_model`` when given (a second model; frozen in place, ``requires_grad_(False)`` and eval mode);
    - else, for a PEFT model, the same model with its adapter disabled (no second copy in memory);
    - else a frozen copy of ``model`` taken at construction (before any training or checkpoint loading, so a
      resumed run keeps the initial model as reference).

    The reference pass runs first, without gradients, so its activations are freed before the model's own
    forward and backward pass: peak memory is that of fine-tuning plus the reference's weights, if any.

    Args:
        model: the model to train (a ``PreTrainedModel`` or a PEFT model).
        args: an :class:`~paperpack.o1_pruner.O1PrunerConfig`.
        ref_model: the frozen reference, or None (see above).
        train_dataset: records with ``prompt_ids``, ``completion_ids`` and ``weight`` (what ``presample``
            returns), or ``prompt``, ``completion`` and ``weight`` texts, tokenized here with
            ``processing_class`` (the completion ends with its end-of-sequence token).
        eval_dataset: the same kind of records (the loss is evaluated).
        processing_class: the tokenizer (needed for text records and for the pad token).
        data_collator: defaults to :class:`~paperpack.o1_pruner.collator.O1PrunerCollator`.
        **kwargs: any other ``Trainer`` argument.

    Raises:
        TypeError: when ``args`` is not an ``O1PrunerConfig``.
        ConfigError: for records without the columns above, a non-finite weight, or a sample longer than the
            model's context (checked before training starts).

    Logged besides the loss: ``ratio`` (mean r), ``clip_fraction`` (share of ratios outside [1−ε, 1+ε]) and
    ``weight`` (mean w of the samples seen), averaged since the last log on the main process.

    Examples:
        >>> import tempfile
        >>> from paperpack.core.hf import tiny_causal_lm, training_args
        >>> from paperpack.o1_pruner import O1PrunerConfig, O1PrunerTrainer
        >>> model, tokenizer = tiny_causal_lm()
        >>> data = [{"prompt_ids": [1, 40, 41], "completion_ids": [42, 43, 2], "weight": w}
        ...         for w in (1.0, -1.0)]
        >>> args = training_args(tempfile.mkdtemp(), cls=O1PrunerConfig, max_steps=1, save_strategy="no",
        ...                      per_device_train_batch_size=2, disable_tqdm=True)
        >>> trainer = O1PrunerTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        >>> trainer.train().global_step  # doctest: +ELLIPSIS
        {'train_runtime': ...}
        1
    """

    args: O1PrunerConfig
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: O1PrunerConfig | None = None,
        *,
        ref_model: PreTrainedModel | nn.Module | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, O1PrunerConfig):
            raise TypeError(f"`args` must be an O1PrunerConfig, got {type(args).__name__}")
        if model is None:
            raise ConfigError("`model` is required")
        limit = context_length(model)
        train_dataset = _prepare(train_dataset, processing_class, limit, "train_dataset")
        eval_dataset = _prepare(eval_dataset, processing_class, limit, "eval_dataset")
        if data_collator is None:
            data_collator = O1PrunerCollator(_pad_id(model, processing_class))
        self._stored_reference = _has_ref_logps(train_dataset, eval_dataset, ref_model)
        self._peft_reference = not self._stored_reference and ref_model is None and _is_peft(model)
        if ref_model is None and not self._peft_reference and not self._stored_reference:
            logger.info("no ref_model: the reference is a frozen copy of the initial model")
            ref_model = copy.deepcopy(model)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        self.ref_model: nn.Module | None = None
        if ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def _set_signature_columns_if_needed(self) -> None:
        # The collator reads these; with `remove_unused_columns=True` the rest is dropped.
        self._signature_columns = list(_COLUMNS)  # type: ignore[assignment]

    def _get_num_items_in_batch(self, batch_samples: list[Any], device: torch.device) -> Tensor:
        """The number of samples in the optimizer step, summed over every data-parallel rank."""
        count = torch.tensor([sum(len(batch["weight"]) for batch in batch_samples)], device=device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count)
        return count.sum()

    @contextmanager
    def _reference(self, model: nn.Module) -> Iterator[nn.Module]:
        if self.ref_model is not None:
            yield self.ref_model
            return
        unwrapped = self.accelerator.unwrap_model(model)
        with unwrapped.disable_adapter():
            yield unwrapped

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The O1-Pruner loss of one micro-batch, normalized by the step's sample count when given.

        With ``num_items_in_batch`` (training), the loss is the sum over the micro-batch divided by the number
        of samples in the whole optimizer step (every micro-batch and rank), times the number of processes
        (DDP averages gradients over ranks): the step's gradient is that of the mean over all its samples.
        Without it (evaluation), it is the micro-batch mean.
        """
        labels = inputs["labels"]
        features = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        if "ref_logps" in inputs:
            ref_logps = inputs["ref_logps"]
        else:
            with torch.no_grad(), self._reference(model) as reference:
                ref_logps, _ = token_log_probs(_logits(reference, features), labels)
        policy_logps, mask = token_log_probs(_logits(model, features), labels)
        ref_logps = ref_logps.to(policy_logps.dtype)
        weights = inputs["weight"]
        if self.args.ratio_level == "token":
            policy, ref, token_mask = policy_logps, ref_logps, mask
        else:
            policy, ref, token_mask = sequence_mean(policy_logps, mask), sequence_mean(ref_logps, mask), None
        losses = o1_pruner_loss(
            policy, ref, weights, cliprange=self.args.cliprange, mask=token_mask, reduction="none"
        )
        if num_items_in_batch is None:
            loss = losses.mean()
        else:
            loss = losses.sum() / num_items_in_batch * self.accelerator.num_processes
        if model.training:
            self._record(policy.detach(), ref, weights, token_mask)
        return (loss, {"per_sample_loss": losses.detach()}) if return_outputs else loss

    def _record(self, policy: Tensor, ref: Tensor, weights: Tensor, mask: Tensor | None) -> None:
        ratio = torch.exp(policy - ref)
        clipped = ((ratio < 1 - self.args.cliprange) | (ratio > 1 + self.args.cliprange)).float()
        if mask is None:
            self._metrics["ratio"].append(float(ratio.mean()))
            self._metrics["clip_fraction"].append(float(clipped.mean()))
        else:
            count = mask.sum()
            self._metrics["ratio"].append(float((ratio * mask).sum() / count))
            self._metrics["clip_fraction"].append(float((clipped * mask).sum() / count))
        self._metrics["weight"].append(float(weights.float().mean()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged ``ratio``, ``clip_fraction`` and ``weight`` to the training logs."""
        if "loss" in logs and self._metrics:
            for key, values in self._metrics.items():
                logs[key] = sum(values) / len(values)
            self._metrics.clear()
        super().log(logs, start_time)


def _has_ref_logps(train_dataset: Any, eval_dataset: Any, ref_model: Any) -> bool:
    """Whether the data sets carry the reference's log-probabilities (all of them, or none)."""
    given = [d for d in (train_dataset, eval_dataset) if d is not None]
    stored = ["ref_logps" in d.column_names for d in given]
    if any(stored) and not all(stored):
        raise ConfigError(
            "`train_dataset` and `eval_dataset` must both carry `ref_logps` or neither (one reference)"
        )
    if given and all(stored) and ref_model is not None:
        raise ConfigError(
            "`ref_model` is given but the data carries the reference's `ref_logps` already; give one "
            "reference"
        )
    return bool(given) and all(stored)


def _logits(model: nn.Module | Any, features: dict[str, Tensor]) -> Tensor:
    return model(**features, use_cache=False).logits  # type: ignore[no-any-return]


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency of the core
        return False
    return isinstance(model, PeftModel)


def _pad_id(model: Any, tokenizer: Any) -> int:
    for source in (tokenizer, getattr(model, "config", None)):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            if isinstance(value, int):
                return value
    return 0


def _prepare(dataset: Any, tokenizer: Any, limit: int | None, name: str) -> Any:
    """Tokenize text records if needed and check the columns, weights and lengths before training."""
    if dataset is None:
        return None
    from datasets import Dataset

    if isinstance(dataset, list):
        dataset = Dataset.from_list(dataset)
    if not isinstance(dataset, Dataset):
        raise ConfigError(
            f"`{name}` must be a datasets.Dataset or a list of records, got {type(dataset).__name__}"
        )
    columns = set(dataset.column_names)
    if "weight" not in columns:
        raise ConfigError(
            f"`{name}` needs a 'weight' column (what presample writes); it has {sorted(columns)}"
        )
    if not {"prompt_ids", "completion_ids"} <= columns:
        if not {"prompt", "completion"} <= columns:
            raise ConfigError(
                f"`{name}` needs 'prompt_ids' and 'completion_ids' (or 'prompt' and 'completion' texts); "
                f"it has {sorted(columns)}"
            )
        if tokenizer is None:
            raise ConfigError(f"`{name}` holds texts: pass the tokenizer as `processing_class`")
        dataset = dataset.map(lambda record: _tokenize(record, tokenizer))
    weights = dataset["weight"]
    bad = [i for i, w in enumerate(weights) if not isinstance(w, int | float) or not math.isfinite(w)]
    if bad:
        raise ConfigError(f"`{name}` sample {bad[0]} has a non-finite weight {weights[bad[0]]!r}")
    if "ref_logps" in columns:
        _check_ref_logps(dataset, name)
    if limit is not None:
        lengths = [
            len(p) + len(c) for p, c in zip(dataset["prompt_ids"], dataset["completion_ids"], strict=True)
        ]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] > limit:
            raise ConfigError(
                f"`{name}` sample {longest} has {lengths[longest]} tokens (prompt and completion), beyond "
                f"the "
                f"model's context of {limit}; drop or shorten it (truncating would change L(y))"
            )
    return dataset


def _check_ref_logps(dataset: Any, name: str) -> None:
    for index, (logps, completion) in enumerate(
        zip(dataset["ref_logps"], dataset["completion_ids"], strict=True)
    ):
        if len(logps) != len(completion) or not all(math.isfinite(v) and v <= 0 for v in logps):
            raise ConfigError(
                f"`{name}` sample {index} has `ref_logps` that are not {len(completion)} finite "
                "log-probabilities (<= 0), one per completion token"
            )


def _tokenize(record: dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
    completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = [*completion, tokenizer.eos_token_id]
    return {"prompt_ids": tokenizer(record["prompt"])["input_ids"], "completion_ids": completion}
