"""``PanaceaConfig``: ``transformers.TrainingArguments`` plus Panacea's settings (arXiv:2501.18100)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int, check_positive

__all__ = ["FINAL_PERTURBATIONS", "PanaceaConfig"]

#: The rules for the perturbation added to the weights when training ends.
FINAL_PERTURBATIONS = ("last_step", "mean", "none")


@dataclass
class PanaceaConfig(TrainingArguments):
    """Training arguments for :class:`~paperpack.panacea.PanaceaTrainer`.

    Panacea solves the max-max problem ``max_w max_{‖ε‖₂≤ρ} λ·(h(w+ε) − h(w)) − g(w)`` (g: the loss on the
    user's fine-tuning data, h: the loss on a harmful data set): each step takes the first-order inner
    solution ε = ρ·∇h(w)/‖∇h(w)‖₂ and descends along g − λ(h1 − h0), where h0 = ∇h(w) and h1 = ∇h(w+ε); after
    training the final ε is added to the weights. The learning rate η, the optimizer, its schedule and weight
    decay are the ``TrainingArguments`` ones (the paper's GSM8K script: ``learning_rate=2e-5``,
    ``weight_decay=0.1``, ``warmup_ratio=0.1``, ``lr_scheduler_type="constant"``, 20 epochs, batch 10).

    No default of ``TrainingArguments`` is changed.

    Raises:
        ConfigError: for a bad value, an invalid regular expression in ``perturb_parameters``, or FSDP /
            DeepSpeed (the in-place perturbation needs every rank to hold whole parameters).

    Example:
        >>> from paperpack.panacea import PanaceaConfig
        >>> args = PanaceaConfig("out", panacea_rho=1.0, panacea_lambda=1e-3, report_to="none")
        >>> args.panacea_rho, args.harmful_loss_clamp, args.final_perturbation
        (1.0, 5.0, 'last_step')
    """

    panacea_rho: float = field(
        default=1.0,
        metadata={
            "help": "Perturbation intensity ρ: the global L2 norm of ε = ρ·∇h/‖∇h‖ over the perturbed "
            "parameters. Default 1.0 (the paper's eps_rho)."
        },
    )
    panacea_lambda: float = field(
        default=1e-3,
        metadata={
            "help": "Regularizer intensity λ of λ·(h(w+ε) − h(w)); the gradient is g − λ(h1 − h0). "
            "0 trains plain SFT while still computing ε. Default 1e-3 (the paper's lamb, tuned for 7B "
            "models)."
        },
    )
    harmful_loss_clamp: float | None = field(
        default=5.0,
        metadata={
            "help": "Clamp C of the harmful loss at w+ε: min(h(w+ε), C), so h1 = 0 once h(w+ε) > C. None "
            "disables the clamp. Default 5.0 (the paper's code)."
        },
    )
    perturb_parameters: list[str] | None = field(
        default=None,
        metadata={
            "help": "Which trainable parameters ε perturbs: regular expressions matched with re.search "
            "against parameter names; None perturbs every trainable parameter (the paper)."
        },
    )
    final_perturbation: Literal["last_step", "mean", "none"] = field(
        default="last_step",
        metadata={
            "help": "The ε added to the weights when training ends: last_step, the last step's ε (the "
            "paper's add_eps); mean, the mean of every step's ε (ours); none, leave the weights as trained "
            "(ours; trainer.perturbation still holds the last ε)."
        },
    )
    harmful_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Harmful examples per micro-batch and device; None uses per_device_train_batch_size. "
            "(The paper's code hard-codes 10, its batch size.)"
        },
    )

    def __post_init__(self) -> None:
        check_positive("panacea_rho", self.panacea_rho)
        check_positive("panacea_lambda", self.panacea_lambda, allow_zero=True)
        if self.harmful_loss_clamp is not None:
            check_positive("harmful_loss_clamp", self.harmful_loss_clamp)
        if self.harmful_batch_size is not None:
            check_int("harmful_batch_size", self.harmful_batch_size, minimum=1)
        if self.final_perturbation not in FINAL_PERTURBATIONS:
            allowed = ", ".join(repr(rule) for rule in FINAL_PERTURBATIONS)
            raise ConfigError(
                f"`final_perturbation` must be one of {allowed}, got {self.final_perturbation!r}"
            )
        if self.perturb_parameters is not None:
            self.perturb_parameters = list(check_patterns("perturb_parameters", self.perturb_parameters))
        if self.fsdp or self.deepspeed is not None:
            raise ConfigError(
                "`fsdp` and `deepspeed` are not supported by Panacea, got "
                f"fsdp={self.fsdp!r}, deepspeed={self.deepspeed!r}: the perturbation w + ε is applied in "
                "place, so every rank must hold whole parameters; use DDP (accelerate launch without FSDP / "
                "DeepSpeed)"
            )
        super().__post_init__()


def check_patterns(name: str, patterns: object) -> tuple[str, ...]:
    """Check that ``patterns`` is a non-empty list of valid regular expressions and return them.

    Raises:
        ConfigError: naming the argument and the bad pattern.
    """
    if isinstance(patterns, str) or not isinstance(patterns, list | tuple):
        raise ConfigError(f"`{name}` must be a list of regular expressions or None, got {patterns!r}")
    if not patterns:
        raise ConfigError(
            f"`{name}` must name at least one pattern (None perturbs every trainable parameter)"
        )
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"`{name}` must hold strings, got {pattern!r} ({type(pattern).__name__})")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"`{name}` holds an invalid regular expression {pattern!r}: {error}") from None
    return tuple(patterns)
