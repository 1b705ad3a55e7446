"""``PanaceaSFTConfig`` and ``PanaceaSFTTrainer``: TRL's ``SFTTrainer`` with Panacea's training step."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from torch import Tensor, nn
from trl.trainer.sft_config import SFTConfig
from trl.trainer.sft_trainer import SFTTrainer

from paperpack.panacea.config import PanaceaConfig
from paperpack.panacea.trainer import PanaceaTrainerMixin

__all__ = ["PanaceaSFTConfig", "PanaceaSFTTrainer"]


@dataclass
class PanaceaSFTConfig(SFTConfig, PanaceaConfig):
    """Arguments of :class:`~paperpack.panacea.PanaceaSFTTrainer`: ``trl.SFTConfig`` plus Panacea's fields.

    Every field of :class:`~paperpack.panacea.PanaceaConfig` and of ``SFTConfig`` (``max_length``,
    ``packing``, ``completion_only_loss``, ...), with ``SFTConfig``'s defaults where they differ from
    ``TrainingArguments`` (``learning_rate=2e-5``, ``logging_steps=10``, ``gradient_checkpointing=True``,
    ``bf16=None``, meaning True unless fp16). On a CPU without bfloat16 support pass ``bf16=False``.

    Examples:
        >>> from paperpack.panacea import PanaceaSFTConfig
        >>> args = PanaceaSFTConfig("out", panacea_lambda=0.1, max_length=64, bf16=False, report_to="none")
        >>> args.panacea_lambda, args.max_length, args.learning_rate
        (0.1, 64, 2e-05)
    """


class PanaceaSFTTrainer(PanaceaTrainerMixin, SFTTrainer):
    """Panacea with TRL's ``SFTTrainer``: TRL's data handling, the step of ``PanaceaTrainerMixin``.

    ``harmful_dataset`` takes any format ``train_dataset`` takes (plain text, prompt-completion,
    conversational, pre-tokenized) and is prepared the same way (tokenized, truncated to ``max_length``,
    packed if ``packing``). The harmful loss is ``SFTTrainer.compute_loss`` on harmful batches (so the
    completion-only and assistant-only masks apply to it too), but its entropy, token accuracy and token count
    are not mixed into the training metrics, which stay those of the task batches. The harmful passes run
    inside ``SFTTrainer``'s activation-offloading context, as the task pass does. ``peft_config`` wraps the
    model before Panacea selects its parameters, so ε falls on the adapter weights.

    Args:
        model: a causal LM, a PEFT model, or a model id or folder that ``SFTTrainer`` loads.
        args: a :class:`~paperpack.panacea.PanaceaSFTConfig`.
        harmful_dataset: harmful examples, in a format ``SFTTrainer`` accepts.
        **kwargs: any other ``SFTTrainer`` argument (``train_dataset``, ``processing_class``, ``peft_config``,
            ``formatting_func``, ...).

    Examples:
        >>> import tempfile
        >>> from datasets import Dataset
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.panacea import PanaceaSFTConfig, PanaceaSFTTrainer
        >>> model, tokenizer = tiny_causal_lm()
        >>> task = Dataset.from_list([{"prompt": "2 + 3 =", "completion": " 5"}] * 4)
        >>> harmful = Dataset.from_list([{"prompt": "do harm", "completion": " sure"}] * 4)
        >>> args = PanaceaSFTConfig(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=2,
        ...                         max_length=32, bf16=False, use_cpu=True, report_to="none",
        ...                         save_strategy="no", disable_tqdm=True)
        >>> trainer = PanaceaSFTTrainer(model=model, args=args, train_dataset=task, harmful_dataset=harmful,
        ...                             processing_class=tokenizer)
        >>> trainer.train().global_step  # the Trainer prints its summary  # doctest: +ELLIPSIS
        {'train_runtime': ...}
        2
    """

    args: PanaceaSFTConfig
    panacea_config_class: ClassVar[type[PanaceaConfig]] = PanaceaSFTConfig

    def __init__(
        self,
        model: str | nn.Module,
        args: PanaceaSFTConfig | None = None,
        *,
        harmful_dataset: Any = None,
        formatting_func: Callable[[dict[str, Any]], str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._formatting_func = formatting_func
        super().__init__(
            model=model, args=args, harmful_dataset=harmful_dataset, formatting_func=formatting_func, **kwargs
        )

    def _prepare_harmful_dataset(self, dataset: Any) -> tuple[Any, Any]:
        """Tokenize the harmful set as ``SFTTrainer`` prepares ``train_dataset``, then drop unused columns."""
        dataset_kwargs = cast(dict[str, Any], self.args.dataset_kwargs or {})
        if not dataset_kwargs.get("skip_prepare_dataset", False):
            dataset = self._prepare_dataset(
                dataset,
                cast(Any, self.processing_class),
                self.args,
                self.args.packing,
                self._formatting_func,
                "harmful",
            )
        return super()._prepare_harmful_dataset(dataset)

    def _harmful_context(self) -> contextlib.AbstractContextManager[Any]:
        return cast(contextlib.AbstractContextManager[Any], self.maybe_activation_offload_context)

    def _harmful_loss(self, model: nn.Module, inputs: dict[str, Any], num_items: Any) -> Tensor:
        """``SFTTrainer.compute_loss`` on a harmful batch, its metrics and token count set aside."""
        metrics: dict[str, Any] = self._metrics
        kept_metrics, kept_tokens = metrics["train"], self._total_train_tokens
        metrics["train"] = defaultdict(list)
        try:
            return super()._harmful_loss(model, inputs, num_items)
        finally:
            metrics["train"], self._total_train_tokens = kept_metrics, kept_tokens
