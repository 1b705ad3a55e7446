"""``PanaceaConfig``: ``transformers.TrainingArguments`` plus Panacea's settings (arXiv:2501.18100)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_literal_fields, check_number, check_patterns

__all__ = ["FinalPerturbation", "PanaceaConfig"]

#: The rules for the perturbation added to the weights when training ends.
FinalPerturbation = Literal["last_step", "mean", "none"]


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

    Examples:
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
    final_perturbation: FinalPerturbation = field(
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
    perturbed_pass_pieces: int | None = field(
        default=None,
        metadata={
            "help": "Pass 2 (the harmful loss at w+ε, run after the task micro-batches) takes each harmful "
            "micro-batch in this many pieces of rows, so its activations are smaller while the gradient "
            "buffers hold g; the step is the same up to float rounding. None (ours) picks 2 when at least "
            "half of the model's parameters are trainable (full fine-tuning: the peak memory falls from "
            "5W + A to 4W + A) and 1 otherwise (LoRA: nothing to gain). With the clamp on and more than one "
            "piece, a no-grad forward of all but the last piece decides min(h(w+ε), C) first."
        },
    )

    def __post_init__(self) -> None:
        check_number("panacea_rho", self.panacea_rho, greater_than=0)
        check_number("panacea_lambda", self.panacea_lambda, minimum=0)
        if self.harmful_loss_clamp is not None:
            check_number("harmful_loss_clamp", self.harmful_loss_clamp, greater_than=0)
        if self.harmful_batch_size is not None:
            check_number("harmful_batch_size", self.harmful_batch_size, minimum=1, integer=True)
        pieces = self.perturbed_pass_pieces
        if pieces is not None and (isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1):
            raise ConfigError(
                f"`perturbed_pass_pieces` must be an integer >= 1, or None to let Panacea choose (2 when at "
                f"least half of the parameters are trainable, else 1), got {pieces!r}"
            )
        check_literal_fields(self)
        if self.perturb_parameters is not None:
            check_patterns("perturb_parameters", self.perturb_parameters)
            if not self.perturb_parameters:
                raise ConfigError(
                    "`perturb_parameters` must name at least one pattern, got []; None perturbs every "
                    "trainable parameter"
                )
            self.perturb_parameters = list(self.perturb_parameters)
        if self.fsdp or self.deepspeed is not None:
            raise ConfigError(
                "`fsdp` and `deepspeed` are not supported by Panacea, got "
                f"fsdp={self.fsdp!r}, deepspeed={self.deepspeed!r}: the perturbation w + ε is applied in "
                "place, so every rank must hold whole parameters; use DDP (accelerate launch without FSDP / "
                "DeepSpeed)"
            )
        super().__post_init__()
