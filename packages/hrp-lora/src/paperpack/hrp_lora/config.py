"""The HRP configuration: every knob of the preheat and of the initialization, with whose default it is.

The paper (arXiv:2502.07739) fixes the shape of the method: train a LoRA of a higher rank R for a few steps,
take the singular vectors of its update B·Aᵀ, and use the leading ones as the initial direction of the rank-r
LoRA. It leaves open (as far as the abstract and the public summaries go; no code is published) the preheat
rank, steps and learning rate, which factor receives the singular vectors and at what scale. Every default
below is therefore ours, and its help says so.

Notation: the paper writes W = W0 + B·Aᵀ with A ∈ R^{n×r}; PEFT keeps ``lora_A.weight`` as r×n and
``lora_B.weight`` as m×r, so the update is ΔW = s·B·A with the scaling s = α/r (α/√r with rsLoRA).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_literal_fields, check_number

__all__ = ["SVD", "HRPConfig", "Init", "Optimizer", "Scale"]

Init = Literal["direction", "carry_over"]
Scale = Literal["match_default", "unit", "sqrt_sv"]
SVD = Literal["exact", "full", "lowrank"]
Optimizer = Literal["adamw", "sgd"]


@dataclass
class HRPConfig:
    """Hyperparameters of High-Rank Preheating.

    Every field is validated at construction; the config parses with ``transformers.HfArgumentParser``.

    Examples:
        >>> from paperpack.hrp_lora import HRPConfig
        >>> config = HRPConfig(preheat_rank=64, preheat_steps=50)
        >>> config.init, config.scale, config.svd
        ('direction', 'match_default', 'exact')
        >>> HRPConfig(preheat_steps=0)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `preheat_steps` must be >= 1, got 0
    """

    preheat_rank: int | None = field(
        default=None,
        metadata={
            "help": "Preheat rank R of the temporary LoRA (the paper's 'higher preheating rank'). None: 8·r "
            "for each adapted layer, r from the LoraConfig (rank_pattern included). Default ours."
        },
    )
    preheat_steps: int = field(
        default=20,
        metadata={
            "help": "Optimizer steps T_pre of the preheat (the paper's 'a few steps'). Count them in the "
            "training budget when comparing with other inits. Default ours."
        },
    )
    preheat_lr: float = field(
        default=2e-4,
        metadata={
            "help": "Learning rate of the preheat optimizer, constant. Use the main run's learning rate "
            "(our reading of the paper). Default ours."
        },
    )
    preheat_alpha: float | None = field(
        default=None,
        metadata={
            "help": "lora_alpha of the preheat adapter: its scaling is preheat_alpha/R (preheat_alpha/√R "
            "with use_rslora). None: each preheat layer gets the target adapter's scaling s = α/r, so the "
            "preheat moves ΔW at the rate the main run would. Default ours."
        },
    )
    preheat_optimizer: Optimizer = field(
        default="adamw",
        metadata={
            "help": "Optimizer of the preheat: 'adamw' (torch AdamW, weight decay 0) or 'sgd' (plain "
            "gradient descent, the paper's gradient-flow analysis). It is discarded after the preheat. "
            "Default ours.",
        },
    )
    init: Init = field(
        default="direction",
        metadata={
            "help": "'direction': A <- c·Vh[:r] (top-r right singular vectors of the preheated update), "
            "B <- 0, so the model equals the base at step 0 (the abstract's 'initial direction'); "
            "'carry_over': A <- √(S/s)·Vh[:r], B <- U[:, :r]·√(S/s), keeping the truncated preheat update. "
            "Default ours.",
        },
    )
    scale: Scale = field(
        default="match_default",
        metadata={
            "help": "Row scale c of A for init='direction': 'match_default' (row norm 1/√3, that of PEFT's "
            "kaiming-uniform default), 'unit' (orthonormal rows) or 'sqrt_sv' (row i times √(S_i/s), the "
            "A of 'carry_over'). init='carry_over' always splits √S between A and B. Default ours.",
        },
    )
    svd: SVD = field(
        default="exact",
        metadata={
            "help": "How the SVD of the rank-R product s·B·A is taken: 'exact' (QR of both factors and an "
            "R×R SVD; never forms the m×n matrix), 'full' (torch.linalg.svd of the dense product) or "
            "'lowrank' (torch.svd_lowrank of the dense product, q=R, niter=2). Default ours.",
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the preheat: the preheat adapter's initialization, dropout and data order "
            "drawn during the preheat. The caller's random state is left as it was."
        },
    )

    def __post_init__(self) -> None:
        if self.preheat_rank is not None:
            check_number("preheat_rank", self.preheat_rank, minimum=1, integer=True)
        check_number("preheat_steps", self.preheat_steps, minimum=1, integer=True)
        check_number("preheat_lr", self.preheat_lr, greater_than=0)
        if self.preheat_alpha is not None:
            check_number("preheat_alpha", self.preheat_alpha, greater_than=0)
        check_literal_fields(self)
        check_number("seed", self.seed, minimum=0, integer=True)
        if self.init == "carry_over" and self.scale != "match_default":
            raise ConfigError(
                f"`scale` applies to init='direction' only; init='carry_over' always splits √S between A and "
                f"B (A = √(S/s)·Vh, B = U·√(S/s)), got scale={self.scale!r}: leave `scale` at its default"
            )

    def preheat_rank_for(self, rank: int) -> int:
        """The preheat rank R for a layer whose target rank is ``rank``: ``preheat_rank`` or 8·rank."""
        return self.preheat_rank if self.preheat_rank is not None else 8 * rank
