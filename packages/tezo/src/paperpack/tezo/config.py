"""``ZOConfig``: ``transformers.TrainingArguments`` plus the zeroth-order settings."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_bool, check_int, check_literal_fields, check_number
from paperpack.tezo.choices import Estimate, Method, OneDimMode
from paperpack.tezo.optim import ZOOptimizer

__all__ = ["ZOConfig"]

logger = logging.getLogger(__name__)

# The zeroth-order defaults live in one place, ZOOptimizer's signature; the fields below (and the CLI's flags,
# generated from them) read them from there.
_OPTIMIZER = {name: p.default for name, p in inspect.signature(ZOOptimizer).parameters.items()}


@dataclass
class ZOConfig(TrainingArguments):
    """Training arguments for :class:`~paperpack.tezo.ZOTrainer`.

    The learning rate η is ``learning_rate``, β1 and β2 are ``adam_beta1`` and ``adam_beta2``, the Adam ε is
    ``adam_epsilon`` and the weight decay λ is ``weight_decay`` (decoupled, on the parameters with two or more
    dimensions only: never on biases and norm weights; see :func:`paperpack.tezo.optim.decays`). The
    learning-rate scheduler, gradient accumulation, evaluation and checkpointing are the ``TrainingArguments``
    ones. The ``zo_*`` defaults (and ``learning_rate``'s) are read from :class:`~paperpack.tezo.ZOOptimizer`'s
    signature, their one place.

    Defaults that differ from ``TrainingArguments``: ``learning_rate=1e-5`` (in both the SGD and Adam grids of
    the TeZO paper, and MeZO's script value), ``lr_scheduler_type="constant"`` (MeZO's convention, and the
    CLI's) and ``max_grad_norm=0.0`` (there are no gradients to clip).

    Raises:
        ConfigError: for a bad value, for ``activation_checkpointing`` or its alias ``gradient_checkpointing``
            (there is no backward pass to save memory for), for ``fp16`` (its gradient scaler needs gradients;
            use ``bf16`` or float32), and for FSDP or DeepSpeed (the in-place perturbation needs every rank to
            hold the whole parameters).

    Examples:
        >>> from paperpack.tezo import ZOConfig
        >>> args = ZOConfig("out", zo_method="tezo_adam", zo_rank=16, max_steps=100, report_to="none")
        >>> args.optimizer_kwargs()["rank"]
        16
    """

    zo_method: Method = field(
        default=_OPTIMIZER["method"],
        metadata={"help": "Zeroth-order method; the default, tezo_adam, is the paper's best variant."},
    )
    zo_eps: float = field(
        default=_OPTIMIZER["eps"],
        metadata={
            "help": "Perturbation scale ρ (MeZO's ε); the default is MeZO's value, TeZO's is not stated."
        },
    )
    zo_rank: int = field(
        default=_OPTIMIZER["rank"],
        metadata={
            "help": "Rank r of TeZO's CPD directions U diag(τ) Vᵀ and of LOZO's U Vᵀ (the default is ours)."
        },
    )
    zo_cache_factors: bool = field(
        default=_OPTIMIZER["cache_factors"],
        metadata={
            "help": "Keep TeZO's fixed factors U, V (LOZO's V) in memory, (m+n)·r numbers per matrix; False "
            "regenerates them from per-layer seeds at every use (the default is ours)."
        },
    )
    zo_scale_by_rank: bool = field(
        default=_OPTIMIZER["scale_by_rank"],
        metadata={
            "help": "Draw τ_t ~ N(0, I/r) (LOZO: divide Z by √r), which makes the estimate unbiased instead "
            "of r times the gradient; off by default, as in the peers' code (ours)."
        },
    )
    zo_estimate: Estimate = field(
        default=_OPTIMIZER["estimate"],
        metadata={
            "help": "two_sided: κ = (ℓ(θ+ρZ) − ℓ(θ−ρZ))/(2ρ) (MeZO, TeZO); one_sided: κ = (ℓ(θ+ρZ) − ℓ(θ))/ρ "
            "(ZO-Bench); the default is the papers'."
        },
    )
    zo_one_dim: OneDimMode = field(
        default=_OPTIMIZER["one_dim"],
        metadata={
            "help": "1-D parameters (biases, norms): dense perturbs them with a dense Gaussian as LOZO does; "
            "freeze leaves them untouched (the default is ours)."
        },
    )
    zo_lozo_interval: int = field(
        default=_OPTIMIZER["lozo_interval"],
        metadata={"help": "ν: LOZO redraws its V every ν steps (the default is LOZO's script's)."},
    )
    zo_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of every zeroth-order random draw; unset, `seed` is used."},
    )
    learning_rate: float = field(
        default=_OPTIMIZER["lr"],
        metadata={"help": "Learning rate η; the default is ours, in the TeZO paper's SGD and Adam grids."},
    )
    lr_scheduler_type: SchedulerType | str = field(
        default="constant",
        metadata={
            "help": "The learning-rate schedule (transformers' names); the default is MeZO's convention "
            "(ours for TeZO, whose schedule is not stated), where TrainingArguments decays linearly."
        },
    )
    max_grad_norm: float = field(
        default=0.0,
        metadata={"help": "Unused by zeroth-order training: there are no gradients to clip."},
    )

    def __post_init__(self) -> None:
        check_literal_fields(self)
        check_number("zo_eps", self.zo_eps, greater_than=0)
        check_int("zo_rank", self.zo_rank, minimum=1)
        check_bool("zo_cache_factors", self.zo_cache_factors)
        check_bool("zo_scale_by_rank", self.zo_scale_by_rank)
        check_int("zo_lozo_interval", self.zo_lozo_interval, minimum=1)
        if self.zo_seed is not None:
            check_int("zo_seed", self.zo_seed, minimum=0)
        for name in (
            "activation_checkpointing",
            "gradient_checkpointing",
        ):  # the latter: its deprecated alias
            if getattr(self, name, None):
                raise ConfigError(
                    f"`{name}` must be False for zeroth-order training, got True: there is no backward pass "
                    "whose memory it could save"
                )
        if self.fp16:
            raise ConfigError(
                "`fp16` must be False for zeroth-order training, got True: fp16 mixed precision needs "
                "gradients for its loss scaler; use bf16=True or float32"
            )
        if self.fsdp or self.deepspeed is not None:
            raise ConfigError(
                "`fsdp` and `deepspeed` are not supported by zeroth-order training, got "
                f"fsdp={self.fsdp!r}, deepspeed={self.deepspeed!r}: every rank must hold whole parameters; "
                "use DDP (accelerate launch without FSDP / DeepSpeed)"
            )
        super().__post_init__()
        if self.max_grad_norm > 0:
            logger.warning(
                "max_grad_norm=%s is ignored: zeroth-order training has no gradients", self.max_grad_norm
            )

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The :class:`~paperpack.tezo.ZOOptimizer` keyword arguments these settings describe."""
        return {
            "method": self.zo_method,
            "lr": self.learning_rate,
            "eps": self.zo_eps,
            "rank": self.zo_rank,
            "betas": (self.adam_beta1, self.adam_beta2),
            "seed": self.seed if self.zo_seed is None else self.zo_seed,
            "adam_eps": self.adam_epsilon,
            "weight_decay": self.weight_decay,
            "cache_factors": self.zo_cache_factors,
            "scale_by_rank": self.zo_scale_by_rank,
            "estimate": self.zo_estimate,
            "one_dim": self.zo_one_dim,
            "lozo_interval": self.zo_lozo_interval,
        }
