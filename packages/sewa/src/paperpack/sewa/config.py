"""The SeWA configuration: every knob of the mask search, with the paper's symbol and whose default it is.

The paper (arXiv:2502.10119) states the ingredients (a relaxed Bernoulli mask over the last checkpoints, Monte
Carlo samples M, an annealed temperature, ``max_iteration`` iterations, a cardinality constraint on the mask)
but not their values per experiment, so every default below is ours unless its help says "paper".

Naming follows the issue, not the paper note: ``k`` is the number of snapshots *kept* (the paper's K in the
behaviour-cloning headline) and the *window* is the number of snapshots considered (written K in the API).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_bool, check_int, check_literal_fields, check_positive

__all__ = [
    "AveragingMode",
    "MaskOptimizer",
    "Projection",
    "SeWAConfig",
    "SelectionData",
    "TemperatureSchedule",
]

TemperatureSchedule = Literal["exponential", "linear", "constant"]
MaskOptimizer = Literal["adam", "sgd"]
AveragingMode = Literal["normalized", "over_k"]
Projection = Literal["sum_eq_k", "sum_le_k"]
SelectionData = Literal["train", "eval"]


@dataclass
class SeWAConfig:
    """Hyperparameters of SeWA's probabilistic-mask search.

    Every field is validated at construction; the config parses with ``transformers.HfArgumentParser``.

    Examples:
        >>> from paperpack.sewa import SeWAConfig
        >>> config = SeWAConfig(k=3, iterations=50)
        >>> config.mc_samples
        4
        >>> SeWAConfig(k=0)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `k` must be >= 1, got 0
    """

    k: int = field(
        default=5,
        metadata={
            "help": "Number of snapshots kept and averaged (the paper's K, the mask's cardinality). "
            "Default ours; the paper's behaviour-cloning headline uses 10."
        },
    )
    iterations: int = field(
        default=100,
        metadata={"help": "Mask-optimisation iterations (the paper's max_iteration). Default ours."},
    )
    mc_samples: int = field(
        default=4,
        metadata={
            "help": "Monte Carlo mask samples per iteration (the paper's M); each sample evaluates the loss "
            "once. Default ours."
        },
    )
    temperature_start: float = field(
        default=1.0,
        metadata={"help": "Initial relaxation temperature τ_0 of the relaxed Bernoulli mask. Default ours."},
    )
    temperature_end: float = field(
        default=0.1,
        metadata={"help": "Final relaxation temperature τ_min reached at the last iteration. Default ours."},
    )
    temperature_schedule: TemperatureSchedule = field(
        default="exponential",
        metadata={
            "help": "How τ moves from temperature_start to temperature_end over the iterations. "
            "Default ours.",
        },
    )
    mask_lr: float = field(
        default=0.1,
        metadata={"help": "Step size η of the keep-probabilities s. Default ours."},
    )
    mask_optimizer: MaskOptimizer = field(
        default="adam",
        metadata={
            "help": "Update rule for s before each projection: 'adam' (scale-free in the loss, our default) "
            "or 'sgd' (plain projected gradient descent, s <- s - η g).",
        },
    )
    averaging: AveragingMode = field(
        default="normalized",
        metadata={
            "help": "Soft average during the search: 'normalized' = Σ m_i w_i / Σ m_i (default, ours) or "
            "'over_k' = Σ m_i w_i / k.",
        },
    )
    projection: Projection = field(
        default="sum_eq_k",
        metadata={
            "help": "Feasible set of s after each step: 'sum_eq_k' = {0 <= s <= 1, Σ s = k} (default, ours) "
            "or 'sum_le_k' = {0 <= s <= 1, Σ s <= k}.",
        },
    )
    selection_data: SelectionData = field(
        default="train",
        metadata={
            "help": "Data the mask is fitted on in SeWACallback: 'train' (the paper: the training "
            "objective F) or 'eval' (held-out data, against overfitting the mask).",
        },
    )
    vmap_loss: bool = field(
        default=False,
        metadata={
            "help": "Evaluate the M Monte Carlo samples in one call through torch.func.vmap (needs a "
            "vmappable loss_fn; all samples then see the same data). Off: one loss_fn call per sample. Ours."
        },
    )
    backward_per_sample: bool = field(
        default=False,
        metadata={
            "help": "Run one backward pass per Monte Carlo sample, holding one sample's activations at a "
            "time. Off: one backward pass for the M samples' losses (faster for small models; holds the M "
            "samples' activations until it). The results are the same. Ours."
        },
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the relaxed-Bernoulli noise (and of nothing else)."},
    )

    def __post_init__(self) -> None:
        check_int("k", self.k, minimum=1)
        check_int("iterations", self.iterations, minimum=1)
        check_int("mc_samples", self.mc_samples, minimum=1)
        check_positive("temperature_start", self.temperature_start)
        check_positive("temperature_end", self.temperature_end)
        if self.temperature_end > self.temperature_start:
            raise ConfigError(
                f"`temperature_end` must be <= `temperature_start` ({self.temperature_start!r}): the "
                f"temperature is annealed, got {self.temperature_end!r}"
            )
        check_positive("mask_lr", self.mask_lr)
        check_literal_fields(self)
        check_bool("vmap_loss", self.vmap_loss)
        check_bool("backward_per_sample", self.backward_per_sample)
        check_int("seed", self.seed, minimum=0)
