"""The Mediator configuration: every choice of the reconstruction, with its symbol and whose default it is.

The paper (arXiv:2502.04411) gives the ingredients (a per-layer conflict d_l, a threshold, average below it,
one dense plus per-task sparse experts above it, a task-level router with an uncertainty fallback) but not
their definitions or values, and has no public code. Every default below is ours unless its help says
otherwise; the reasons are on the docs' method page.

This module imports no torch: the command line builds its flags from :class:`MediatorConfig` instantly. The
``dense_method`` is checked against paperpack-r-tsvm's registry when a config is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_bool, check_int, check_literal_fields, check_number

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ConflictMeasure",
    "MediatorConfig",
    "RouterFeatures",
    "ThresholdMode",
    "Unit",
]

ConflictMeasure = Literal["sign", "cosine", "l2_var"]
Unit = Literal["decoder_block", "module"]
ThresholdMode = Literal["zscore", "topk", "absolute"]
RouterFeatures = Literal["mean", "last"]

#: The threshold each mode uses when ``threshold`` is None (``absolute`` has none: it must be given).
DEFAULT_THRESHOLDS: dict[str, float] = {"zscore": 1.0, "topk": 0.25}


@dataclass
class MediatorConfig:
    """How Mediator measures conflict, picks the routed units, builds the experts and routes.

    Every field is validated at construction.

    Examples:
        >>> from paperpack.merge_router import MediatorConfig
        >>> config = MediatorConfig(threshold_mode="topk", threshold=0.5, sparse_density=0.2)
        >>> config.resolved_threshold, config.dense_method
        (0.5, 'linear')
        >>> MediatorConfig(sparse_density=0.0)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `sparse_density` must be in (0, 1], got 0.0
    """

    conflict: ConflictMeasure = field(
        default="sign",
        metadata={
            "help": "d_l, the conflict of a unit: sign (fraction of trimmed coordinates where the experts' "
            "task vectors disagree in sign), cosine (1 - mean pairwise cosine of the task vectors) or l2_var "
            "(variance of the task vectors around their mean over their mean square). Default ours."
        },
    )
    trim_density: float = field(
        default=0.2,
        metadata={
            "help": "sign conflict only: the fraction of each task vector's largest-magnitude entries that "
            "vote "
            "(per tensor; the paper's 'parameter denoising'). Default ours (TIES's top-20%%)."
        },
    )
    unit: Unit = field(
        default="decoder_block",
        metadata={
            "help": "l, what is averaged or routed as a whole: decoder_block (model.layers.3) or module "
            "(model.layers.3.self_attn.q_proj). Default ours (the paper plots per layer)."
        },
    )
    threshold_mode: ThresholdMode = field(
        default="zscore",
        metadata={
            "help": "which units are routed: zscore (d_l > mean + threshold x std over the routable units), "
            "topk (the `threshold` fraction with the highest d_l) or absolute (d_l > threshold). "
            "Default ours."
        },
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "the threshold's value: z for zscore (default 1.0), the routed fraction in (0, 1] for "
            "topk "
            "(default 0.25), the d_l cut for absolute (required). Defaults ours; the paper gives none."
        },
    )
    route_embeddings: bool = field(
        default=False,
        metadata={
            "help": "allow the tensors outside the decoder blocks (the input embeddings, the final norm, the "
            "LM head) to be routed; by default only the units inside the blocks (the paper's layers) compete "
            "and the others are always averaged (their conflict is still measured and reported). Default "
            "ours."
        },
    )
    dense_method: str = field(
        default="linear",
        metadata={
            "help": "D^l, the dense expert of a routed unit: any paperpack-r-tsvm merge method without "
            "statistics (linear = the experts' mean, task_arithmetic, ties, tsv_m, ...). Default ours (the "
            "mean); averaged units are always the mean."
        },
    )
    dense_params: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": 'the dense method\'s parameters, e.g. {"density": 0.2} for ties.'},
    )
    sparse_density: float = field(
        default=0.1,
        metadata={
            "help": "δ: the fraction of entries of θ_i - D^l kept per routed tensor and task, by magnitude. "
            "Default ours (task-arithmetic sparsity suggests 0.05 to 0.3)."
        },
    )
    router_features: RouterFeatures = field(
        default="mean",
        metadata={
            "help": "the router's input: the mean over the prompt's tokens of the dense model's hidden state "
            "at `router_layer`, or the last token's. Default ours."
        },
    )
    router_layer: int = field(
        default=0,
        metadata={
            "help": "the hidden state the router reads: 0 = the input embeddings (cheap: no forward pass), "
            "L = the output of decoder layer L of the dense model. Default ours."
        },
    )
    router_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "the router MLP's hidden width (d -> h -> tasks); None = 2 d, as Twin-Merging's router. "
            "Default ours."
        },
    )
    router_steps: int = field(
        default=300, metadata={"help": "full-batch AdamW steps of router training (cross-entropy). Ours."}
    )
    router_learning_rate: float = field(default=1e-3, metadata={"help": "router AdamW learning rate. Ours."})
    router_weight_decay: float = field(default=0.01, metadata={"help": "router AdamW weight decay. Ours."})
    router_holdout: float = field(
        default=0.2,
        metadata={
            "help": "the fraction of each task's prompts held out to measure the router's accuracy (not "
            "trained on); 0 trains on all and reports no accuracy. Ours."
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "T: p = softmax(router logits / T). Default ours."}
    )
    confidence_threshold: float = field(
        default=0.9,
        metadata={
            "help": "when max p >= this, one expert is used (hard routing); below it, the top_k experts "
            "mixed by their renormalised p. Default ours."
        },
    )
    top_k: int = field(
        default=2, metadata={"help": "experts mixed when the router is uncertain. Default ours."}
    )
    seed: int = field(default=0, metadata={"help": "seed of the router's initialisation and hold-out split."})

    def __post_init__(self) -> None:
        check_literal_fields(self)
        check_number("trim_density", self.trim_density, greater_than=0, maximum=1)
        if self.threshold is not None:
            check_number("threshold", self.threshold)
        if self.threshold_mode == "topk" and self.threshold is not None:
            check_number("threshold", self.threshold, greater_than=0, maximum=1)
        if self.threshold_mode == "absolute" and self.threshold is None:
            raise ConfigError(
                "`threshold_mode` absolute needs `threshold`, the d_l above which a unit is routed"
            )
        check_bool("route_embeddings", self.route_embeddings)
        if not isinstance(self.dense_params, dict):
            raise ConfigError(
                "`dense_params` must be a mapping of the dense method's parameters, got "
                f"{self.dense_params!r}"
            )
        self.dense_method_config()
        check_number("sparse_density", self.sparse_density, greater_than=0, maximum=1)
        check_int("router_layer", self.router_layer, minimum=0)
        if self.router_hidden_size is not None:
            check_int("router_hidden_size", self.router_hidden_size, minimum=1)
        check_int("router_steps", self.router_steps, minimum=1)
        check_number("router_learning_rate", self.router_learning_rate, greater_than=0)
        check_number("router_weight_decay", self.router_weight_decay, minimum=0)
        check_number("router_holdout", self.router_holdout, minimum=0, less_than=1)
        check_number("temperature", self.temperature, greater_than=0)
        check_number("confidence_threshold", self.confidence_threshold, minimum=0, maximum=1)
        check_int("top_k", self.top_k, minimum=1)
        check_int("seed", self.seed, minimum=0)

    @property
    def resolved_threshold(self) -> float:
        """The threshold in use: ``threshold``, or the mode's default."""
        if self.threshold is not None:
            return float(self.threshold)
        return DEFAULT_THRESHOLDS[self.threshold_mode]

    def dense_method_config(self) -> Any:
        """The r-tsvm config of ``dense_method`` built from ``dense_params`` (validated).

        Raises:
            ConfigError: for an unknown method or parameter, a bad value, or a method that needs statistics.
        """
        from paperpack.r_tsvm import get_method

        if not isinstance(self.dense_method, str):
            raise ConfigError(f"`dense_method` must be a merge method name, got {self.dense_method!r}")
        try:
            method = get_method(self.dense_method)
        except ConfigError as error:
            raise ConfigError(f"`dense_method`: {error}") from None
        if method.statistic is not None:
            raise ConfigError(
                f"`dense_method` {self.dense_method!r} needs per-model {method.statistic} statistics, which "
                "Mediator does not compute; choose a method without statistics (linear, ties, tsv_m, ...)"
            )
        try:
            return method.make_config(self.dense_params)
        except ConfigError as error:
            raise ConfigError(f"`dense_params`: {error}") from None
