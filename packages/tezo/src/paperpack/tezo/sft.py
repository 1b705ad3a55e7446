"""``ZOSFTConfig`` and ``ZOSFTTrainer``: TRL's ``SFTTrainer`` with the zeroth-order training step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from trl.trainer.sft_config import SFTConfig
from trl.trainer.sft_trainer import SFTTrainer

from paperpack.core.errors import ConfigError
from paperpack.tezo.config import ZOConfig
from paperpack.tezo.trainer import ZOTrainerMixin

__all__ = ["ZOSFTConfig", "ZOSFTTrainer"]


@dataclass
class ZOSFTConfig(ZOConfig, SFTConfig):
    """Arguments of :class:`~paperpack.tezo.ZOSFTTrainer`: ``trl.SFTConfig`` plus the ``zo_*`` fields.

    It has every field of :class:`~paperpack.tezo.ZOConfig` and of ``SFTConfig`` (``max_length``,
    ``packing``, ``completion_only_loss``, ...) and the checks of both: ``ZOConfig``'s ``__post_init__`` runs
    first, then ``SFTConfig``'s and ``TrainingArguments``'.

    Where the parents' defaults disagree (our choices): ``learning_rate=1e-5`` and ``max_grad_norm=0.0`` are
    ``ZOConfig``'s; ``gradient_checkpointing`` keeps the ``TrainingArguments`` default (off), since
    ``SFTConfig``'s ``True`` is refused by ``ZOConfig``; ``logging_steps=10`` and ``bf16=None`` (meaning
    ``True`` unless ``fp16``) are ``SFTConfig``'s. On a CPU without bfloat16 support pass ``bf16=False``.

    Raises:
        ConfigError: for anything :class:`~paperpack.tezo.ZOConfig` refuses, for ``activation_offloading``
            (no activations are kept for a backward pass, so there is nothing to offload) and for
            ``loss_type="dft"`` (DFT weights each token's loss by a stop-gradient probability; a zeroth-order
            estimate differentiates the loss value, weight included, so it would minimise another objective).

    Examples:
        >>> from paperpack.tezo import ZOSFTConfig
        >>> args = ZOSFTConfig("out", zo_method="tezo_sgd", max_length=64, bf16=False, report_to="none")
        >>> args.optimizer_kwargs()["method"], args.max_length, args.learning_rate, args.logging_steps
        ('tezo_sgd', 64, 1e-05, 10)
    """

    # Dataclass fields come from the bases in reverse MRO order, so ZOConfig's (which include the
    # TrainingArguments defaults) override SFTConfig's; these two take SFTConfig's default back.
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X update steps; a float in [0, 1) is a ratio of the total steps. The "
            "default is SFTConfig's."
        },
    )
    bf16: bool | None = field(  # type: ignore[assignment]  # SFTConfig's type: None is resolved in __post_init__
        default=None,
        metadata={
            "help": "bfloat16 mixed precision; None means True unless fp16 is set (SFTConfig's default). "
            "Pass False on a CPU without bfloat16 support."
        },
    )

    def __post_init__(self) -> None:
        if self.activation_offloading:
            raise ConfigError(
                "`activation_offloading` must be False for zeroth-order training, got True: the forward "
                "passes run without autograd and keep no activations to offload"
            )
        if self.loss_type == "dft":
            raise ConfigError(
                "`loss_type` must be 'nll' for zeroth-order training, got 'dft': DFT weights each token's "
                "loss by its detached probability, and a zeroth-order estimate differentiates the weighted "
                "loss value, weight included, so it would minimise a different objective"
            )
        super().__post_init__()


class ZOSFTTrainer(ZOTrainerMixin, SFTTrainer):
    """Zeroth-order supervised fine-tuning with TRL's ``SFTTrainer``: TRL's data handling, a ZO step.

    The zeroth-order part is :class:`~paperpack.tezo.ZOTrainerMixin`, as in
    :class:`~paperpack.tezo.ZOTrainer`: the optimizer is a :class:`~paperpack.tezo.ZOOptimizer` built from
    ``args`` through HF's ``get_optimizer_cls_and_kwargs`` hook, and each micro-batch's loss is evaluated
    at θ ± ρZ_t, in eval mode and without autograd, by ``SFTTrainer.compute_loss`` (its chunked
    log-probabilities, the completion-only and assistant-only masks, the loss divided by the tokens of the
    accumulated batch).
    Everything else is ``SFTTrainer``'s: dataset preparation (plain text, prompt-completion, conversational,
    pre-tokenized, packing), ``peft_config``, the collator, evaluation, checkpoints and resume.

    What differs from ``SFTTrainer`` besides the step (our handling):

    - ``SFTTrainer.compute_loss`` files its metrics (``entropy``, ``mean_token_accuracy``, ``num_tokens``)
      under train or eval by ``model.training``, which the zeroth-order step turns off, and counts
      ``num_tokens`` only in train mode. Here the step's metrics go to the training ones, ``num_tokens``
      counts each micro-batch's non-padding tokens once (not once per forward pass), and the model is left in
      train mode after the step, so training logs carry ``entropy`` and ``mean_token_accuracy`` and
      evaluation metrics stay apart. Both metrics come from the forward outputs (no gradients needed) and are
      averaged over the step's two forward passes (θ ± ρZ_t for the two-sided estimate, like the logged loss;
      θ and θ + ρZ_t for the one-sided one).
    - ``SFTTrainer.training_step``'s activation-offloading context is not entered: nothing is kept to
      offload. :class:`~paperpack.tezo.ZOSFTConfig` refuses ``activation_offloading`` and ``loss_type="dft"``.

    Args:
        model: a causal LM (``PreTrainedModel``), a PEFT model, or a model id or folder that ``SFTTrainer``
            loads.
        args: a :class:`~paperpack.tezo.ZOSFTConfig`.
        **kwargs: any other ``SFTTrainer`` argument (``train_dataset``, ``processing_class``,
            ``peft_config``, ...). ``optimizers`` may pass a ready ``ZOOptimizer`` (and scheduler).

    Raises:
        TypeError: when ``args`` is not a ``ZOSFTConfig`` or the optimizer is not a ``ZOOptimizer``.

    Examples:
        >>> import tempfile
        >>> from datasets import Dataset
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.tezo import ZOSFTConfig, ZOSFTTrainer
        >>> model, tokenizer = tiny_causal_lm()
        >>> data = Dataset.from_list([{"text": "the model and the data"}] * 4)
        >>> args = ZOSFTConfig(tempfile.mkdtemp(), max_steps=2, learning_rate=1e-4, max_length=32,
        ...                    bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        ...                    disable_tqdm=True)
        >>> trainer = ZOSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        >>> trainer.train().global_step  # the Trainer prints its summary  # doctest: +ELLIPSIS
        {'train_runtime': ...}
        2
    """

    args: ZOSFTConfig
    zo_config_class: ClassVar[type[ZOConfig]] = ZOSFTConfig

    def __init__(self, model: str | nn.Module, args: ZOSFTConfig | None = None, **kwargs: Any) -> None:
        super().__init__(model=model, args=args, **kwargs)

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor:
        """:meth:`ZOTrainerMixin.training_step`, with ``SFTTrainer``'s metrics kept as training metrics."""
        inputs = self._prepare_inputs(inputs)
        self._total_train_tokens += self._count_tokens(inputs)
        metrics: dict[str, Any] = self._metrics
        eval_metrics = metrics["eval"]
        # compute_loss files its metrics under "eval" in eval mode, the mode of the zeroth-order passes.
        metrics["eval"] = metrics["train"]
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            metrics["eval"] = eval_metrics
            model.train()

    def _count_tokens(self, inputs: dict[str, Tensor | Any]) -> int:
        """Non-padding tokens of the micro-batch on all processes (positions, for padding-free batches)."""
        mask = inputs.get("attention_mask")
        if isinstance(mask, Tensor):
            local = mask.sum()
        elif isinstance(inputs.get("position_ids"), Tensor):
            local = torch.tensor(inputs["position_ids"].size(1), device=self.args.device)
        else:
            raise ValueError(
                "the batch needs `attention_mask` or `position_ids` to count its tokens, got keys "
                f"{sorted(inputs)}"
            )
        return int(self.accelerator.gather_for_metrics(local).sum().item())
