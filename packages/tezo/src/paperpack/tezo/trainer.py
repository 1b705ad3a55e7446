"""``ZOTrainer``: a ``transformers.Trainer`` whose training step is zeroth-order.

The zeroth-order part (argument checks, the optimizer hook, ``training_step``) lives in
:class:`ZOTrainerMixin`, which :class:`ZOTrainer` and :class:`~paperpack.tezo.ZOSFTTrainer` share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer, TrainingArguments

from paperpack.tezo.config import ZOConfig
from paperpack.tezo.optim import ZOOptimizer, decays, unwrap_optimizer

__all__ = ["ZOTrainer", "ZOTrainerMixin"]

# Type checkers see the mixin as a Trainer, so its methods may use the Trainer's attributes; at run time it
# is a plain class that goes before a Trainer subclass among the bases.
if TYPE_CHECKING:
    _TrainerBase = Trainer
else:
    _TrainerBase = object


class ZOTrainerMixin(_TrainerBase):
    """The zeroth-order part of a Hugging Face trainer: argument checks, the optimizer and ``training_step``.

    Put it first among the bases of a ``transformers.Trainer`` subclass
    (``class T(ZOTrainerMixin, Trainer)``); :class:`ZOTrainer` and :class:`~paperpack.tezo.ZOSFTTrainer` are
    built this way. It:

    - checks at construction that ``args`` is a ``zo_config_class`` (a :class:`~paperpack.tezo.ZOConfig`) and
      that an optimizer passed through ``optimizers`` or ``optimizer_cls_and_kwargs`` is a ``ZOOptimizer``;
    - supplies ``get_optimizer_cls_and_kwargs``, the hook HF's ``create_optimizer`` reads, so HF builds a
      ``ZOOptimizer`` from ``args`` on its weight-decay groups of the trainable parameters, and
      ``get_decay_parameter_names``, so those groups follow the optimizer's own rule
      (:func:`~paperpack.tezo.optim.decays`: parameters with two or more dimensions);
    - replaces ``training_step``: eval mode, no autograd, the loss of the micro-batch at θ ± ρZ_t through the
      trainer's own ``compute_loss`` (each evaluation on its own shallow copy of the batch, since
      ``compute_loss`` pops ``labels`` for label smoothing and ``compute_loss_func``) and κ added to the
      optimizer; HF's ``optimizer.step()`` applies it.

    Everything else (the loop, the scheduler, checkpoints, evaluation, logging) is the trainer's. It is
    tested with ``Trainer`` and TRL's ``SFTTrainer`` only. Another trainer needs a ``compute_loss`` whose
    value is the objective (a surrogate loss with a stop-gradient factor is not: the estimate differentiates
    the value), and may need what :class:`~paperpack.tezo.ZOSFTTrainer` adds for ``SFTTrainer``: bookkeeping
    that reads ``model.training`` sees eval mode during the step.

    Raises:
        TypeError: at construction, when ``args`` is not a ``zo_config_class`` or the optimizer is not a
            ``ZOOptimizer``.
    """

    args: ZOConfig
    zo_config_class: ClassVar[type[ZOConfig]] = ZOConfig
    """The arguments class the trainer requires."""

    def __init__(self, model: Any = None, args: ZOConfig | None = None, **kwargs: Any) -> None:
        expected = self.zo_config_class
        if not isinstance(args, expected):
            raise TypeError(f"`args` must be a {expected.__name__}, got {type(args).__name__}")
        optimizer, _ = kwargs.get("optimizers", (None, None))
        if optimizer is not None and not isinstance(optimizer, ZOOptimizer):
            raise TypeError(f"`optimizers[0]` must be a ZOOptimizer, got {type(optimizer).__name__}")
        cls_and_kwargs = kwargs.get("optimizer_cls_and_kwargs")
        if cls_and_kwargs is not None and not issubclass(cls_and_kwargs[0], ZOOptimizer):
            raise TypeError(f"`optimizer_cls_and_kwargs[0]` must be ZOOptimizer, got {cls_and_kwargs[0]!r}")
        super().__init__(model=model, args=args, **kwargs)

    @staticmethod
    def get_optimizer_cls_and_kwargs(
        args: TrainingArguments, model: PreTrainedModel | None = None
    ) -> tuple[Any, Any]:
        """``ZOOptimizer`` and its settings from ``args``, read when HF's ``create_optimizer`` runs.

        HF's ``create_optimizer`` then builds the optimizer on its weight-decay groups, so settings changed on
        ``trainer.args`` before training (or by ``hyperparameter_search``) take effect.
        """
        if not isinstance(args, ZOConfig):
            raise TypeError(f"`args` must be a ZOConfig, got {type(args).__name__}")
        return ZOOptimizer, _without_group_keys(args.optimizer_kwargs())

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """The names of the parameters weight decay applies to: :func:`~paperpack.tezo.optim.decays`.

        The same rule as :class:`~paperpack.tezo.ZOOptimizer` used directly (parameters with two or more
        dimensions), in place of transformers' name patterns, so there is one rule.
        """
        return [name for name, param in model.named_parameters() if decays(param)]

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor:
        """Estimate κ on one micro-batch from two forward passes (no backward) and return its loss.

        The update itself happens in HF's ``optimizer.step()`` after the last micro-batch of the step. No
        key/value cache is built: HF's ``Trainer`` sets ``model.config.use_cache`` from ``args.use_cache``
        (``False`` by default).
        """
        optimizer = unwrap_optimizer(self.optimizer)
        model.eval()
        inputs = self._prepare_inputs(inputs)
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )

        def closure() -> Tensor:
            # A copy per evaluation: compute_loss pops "labels" for label smoothing and compute_loss_func.
            batch = dict(inputs)
            with self.compute_loss_context_manager():
                loss = cast(Tensor, self.compute_loss(model, batch, num_items_in_batch=num_items_in_batch))
            if self.args.n_gpu > 1:
                loss = loss.mean()
            # The same scaling as before ``backward``: the micro-batch κ then add up to the step's κ.
            return loss if scaled else loss / self.current_gradient_accumulation_steps

        with torch.no_grad():
            loss = optimizer.estimate(closure)
        return loss.to(self.args.device)


class ZOTrainer(ZOTrainerMixin, Trainer):
    """Zeroth-order fine-tuning with the Hugging Face ``Trainer``: HF's loop, ``training_step`` replaced.

    The optimizer is a :class:`~paperpack.tezo.ZOOptimizer` built from ``args`` (``ZOConfig``) on the
    trainable parameters, with HF's weight-decay groups (through ``get_optimizer_cls_and_kwargs``, the hook
    HF's ``create_optimizer`` reads), so the HF learning-rate scheduler, checkpointing
    (``optimizer.pt`` holds the ZO state and the step counter that fixes the seed sequence), resume,
    evaluation, logging and accelerate DDP work unchanged. Each micro-batch's ``training_step`` puts the model
    in eval mode (dropout off, as in MeZO), evaluates the loss at θ ± ρZ_t without autograd and adds its
    projected gradient κ; HF's ``optimizer.step()`` then applies the sum of the micro-batch κ (losses are
    scaled for gradient accumulation exactly as before ``backward``, so accumulating k micro-batches equals
    one step on the k-times larger batch), averaged across DDP ranks. PEFT models train their adapter
    parameters only (those with ``requires_grad``).

    The loss logged is (ℓ⁺ + ℓ⁻)/2, equal to ℓ(θ) up to O(ρ²) (MeZO logs ℓ⁺). ``grad_norm`` is logged as 0:
    there are no gradients.

    Args:
        model: the model (a ``PreTrainedModel``, a PEFT model or any module returning a loss).
        args: a :class:`~paperpack.tezo.ZOConfig`.
        **kwargs: any other ``Trainer`` argument. ``optimizers`` may pass a ready ``ZOOptimizer`` (and
            scheduler).

    Raises:
        TypeError: when ``args`` is not a ``ZOConfig`` or the optimizer is not a ``ZOOptimizer``.

    Examples:
        >>> import tempfile
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.tezo import ZOConfig, ZOTrainer
        >>> model, tokenizer = tiny_causal_lm()
        >>> batch = tokenizer(["the model and the data"] * 4, return_tensors="pt")
        >>> data = [{"input_ids": ids, "labels": ids} for ids in batch["input_ids"]]
        >>> args = ZOConfig(tempfile.mkdtemp(), max_steps=2, learning_rate=1e-4, report_to="none",
        ...                 use_cpu=True, save_strategy="no", disable_tqdm=True)
        >>> trainer = ZOTrainer(model=model, args=args, train_dataset=data)
        >>> trainer.train().global_step  # the Trainer prints its summary  # doctest: +ELLIPSIS
        {'train_runtime': ...}
        2
    """

    def __init__(self, model: nn.Module | None = None, args: ZOConfig | None = None, **kwargs: Any) -> None:
        super().__init__(model=model, args=args, **kwargs)


def _without_group_keys(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop ``weight_decay``: HF's ``create_optimizer`` sets it per group (``get_decay_parameter_names``)."""
    return {key: value for key, value in kwargs.items() if key != "weight_decay"}
