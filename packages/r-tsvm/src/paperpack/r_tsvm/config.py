"""The merge methods' parameters: one dataclass per method, validated on construction.

Every field's help names the paper's symbol and says whether its default is the paper's or ours; every config
parses with ``transformers.HfArgumentParser``. This module imports no torch, so the command line can build its
flags from these classes instantly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from paperpack.core.errors import ConfigError
from paperpack.core.validation import (
    check_bool,
    check_int,
    check_literal_fields,
    check_number,
    check_patterns,
    check_positive,
    check_probability,
    check_range,
)

__all__ = [
    "DTYPES",
    "OUTLIER_ACTIONS",
    "OUTLIER_MODES",
    "RANK_MODES",
    "SIGN_METHODS",
    "SVD_MODES",
    "VOCAB_POLICIES",
    "BreadcrumbsConfig",
    "BreadcrumbsTiesConfig",
    "ConsensusConfig",
    "DareConfig",
    "DareTiesConfig",
    "DellaConfig",
    "DellaLinearConfig",
    "FisherConfig",
    "IsoCConfig",
    "IsoCTSConfig",
    "LinearConfig",
    "MergeOutputOptions",
    "ModelStockConfig",
    "NuSlerpConfig",
    "OutlierAction",
    "OutlierMode",
    "OutputDtype",
    "PassthroughConfig",
    "RTSVMConfig",
    "RankMode",
    "RegMeanConfig",
    "SCEConfig",
    "SVDMode",
    "SignMethod",
    "SlerpConfig",
    "TSVMConfig",
    "TaskArithmeticConfig",
    "TiesConfig",
    "VocabPolicy",
]

#: How TIES elects a sign per entry: by total mass ("sum", the paper) or by vote count ("count").
SignMethod = Literal["sum", "count"]
#: How R-TSVM computes robust z-scores ("none": no outlier handling).
OutlierMode = Literal["none", "mad", "sigma"]
#: What R-TSVM does with outliers.
OutlierAction = Literal["downweight", "clip", "both"]
#: How R-TSVM picks each layer's rank.
RankMode = Literal["fixed", "sparsity", "energy"]
#: How TSV-M, R-TSVM and Iso compute singular triplets and polar factors (see ``methods.spectral``).
SVDMode = Literal["fast", "exact"]

SIGN_METHODS: tuple[str, ...] = get_args(SignMethod)
OUTLIER_MODES: tuple[str, ...] = get_args(OutlierMode)
OUTLIER_ACTIONS: tuple[str, ...] = get_args(OutlierAction)
RANK_MODES: tuple[str, ...] = get_args(RankMode)
SVD_MODES: tuple[str, ...] = get_args(SVDMode)

_SVD_HELP = (
    "'fast' (default, ours: Gram-matrix eigendecompositions, the SVD where those would lose accuracy) or "
    "'exact' (full SVDs, the papers' construction; for checking)."
)
_PARALLEL_HELP = (
    "Task matrices whose directions differ by at most this (‖Δ_i/‖Δ_i‖ − Δ_j/‖Δ_j‖‖_F, about the angle in "
    "radians; a sign flip counts as parallel) are merged into their mean before the decomposition (ours: "
    "1e-3; 0 merges only exactly parallel ones)."
)


def _check_spectral(config: TSVMConfig | IsoCConfig | RTSVMConfig) -> None:
    check_literal_fields(config)
    tolerance = getattr(config, "parallel_tol", None)
    if tolerance is not None:
        check_range("parallel_tol", tolerance, 0.0, 2.0)


@dataclass
class LinearConfig:
    """Parameters of linear merging (a weighted model soup).

    Args:
        normalize: divide by Σ_t w_t, so the weights need not sum to one.
    """

    normalize: bool = field(
        default=True,
        metadata={
            "help": "Divide Σ_t w_t θ_t by Σ_t w_t (default True: the uniform soup; mergekit's default)."
        },
    )

    def __post_init__(self) -> None:
        check_bool("normalize", self.normalize)


@dataclass
class TaskArithmeticConfig:
    """Parameters of task arithmetic.

    Args:
        scaling: λ, the factor on the summed task vector.
        normalize: divide Σ_t w_t τ_t by Σ_t w_t (a weighted mean instead of a sum).
    """

    scaling: float = field(
        default=1.0,
        metadata={
            "help": "λ: θ = θ_0 + λ Σ_t w_t τ_t. The paper tunes λ on validation; 1.0 is ours (mergekit's)."
        },
    )
    normalize: bool = field(
        default=False,
        metadata={
            "help": "Divide Σ_t w_t τ_t by Σ_t w_t (default False: the paper's sum; mergekit's default)."
        },
    )

    def __post_init__(self) -> None:
        check_number("scaling", self.scaling)
        check_bool("normalize", self.normalize)


@dataclass
class TiesConfig:
    """Parameters of TIES merging.

    Args:
        density: k, the fraction of each task vector's entries kept by magnitude.
        scaling: λ.
        normalize: the disjoint mean (True) or a disjoint sum (False).
        majority_sign: "sum" (elect by mass, the paper) or "count" (elect by votes).
    """

    density: float = field(
        default=0.2,
        metadata={"help": "k: fraction of entries of each τ_t kept by magnitude (paper's default: top-20%)."},
    )
    scaling: float = field(
        default=1.0,
        metadata={"help": "λ: θ = θ_0 + λ τ_m. The paper tunes λ on validation; 1.0 is ours (mergekit's)."},
    )
    normalize: bool = field(
        default=True,
        metadata={"help": "Disjoint mean over agreeing tasks (True, the paper's) or disjoint sum (False)."},
    )
    majority_sign: SignMethod = field(
        default="sum",
        metadata={"help": "Sign election γ: 'sum' of masses (the paper's) or 'count' of votes."},
    )

    def __post_init__(self) -> None:
        check_probability("density", self.density)
        check_number("scaling", self.scaling)
        check_bool("normalize", self.normalize)
        check_literal_fields(self)


@dataclass
class DareConfig:
    """Parameters of DARE followed by task arithmetic (``dare_linear``).

    Args:
        density: 1 − p, the probability of keeping each entry.
        rescale: divide the kept entries by the density (the paper's 1 / (1 − p)).
        scaling: λ.
        normalize: divide the sum by Σ_t w_t.
        seed: seeds the random masks (combined with the parameter's name).
    """

    density: float = field(
        default=0.5,
        metadata={
            "help": "1 − p: probability of keeping an entry of τ_t. 0.5 is ours (FusionBench's); the "
            "paper sweeps p from 0.1 to 0.99."
        },
    )
    rescale: bool = field(
        default=True, metadata={"help": "Rescale kept entries by 1 / (1 − p) (the paper's Eq. 1)."}
    )
    scaling: float = field(
        default=1.0, metadata={"help": "λ on the merged task vector (1.0: ours, mergekit's)."}
    )
    normalize: bool = field(
        default=False, metadata={"help": "Divide Σ_t w_t τ̃_t by Σ_t w_t (default False, as mergekit)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the Bernoulli masks (ours)."})

    def __post_init__(self) -> None:
        check_probability("density", self.density)
        check_bool("rescale", self.rescale)
        check_number("scaling", self.scaling)
        check_bool("normalize", self.normalize)
        check_int("seed", self.seed, minimum=0)


@dataclass
class DareTiesConfig(DareConfig):
    """Parameters of DARE followed by TIES's sign election and disjoint merge (``dare_ties``).

    Args:
        majority_sign: "sum" or "count", as in :class:`~paperpack.r_tsvm.TiesConfig`.
    """

    majority_sign: SignMethod = field(
        default="sum", metadata={"help": "Sign election: 'sum' of masses (TIES's) or 'count' of votes."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_literal_fields(self)


@dataclass
class BreadcrumbsConfig:
    """Parameters of Model Breadcrumbs.

    Args:
        density: fraction of each task vector's entries kept.
        gamma: fraction of largest-magnitude entries removed as outliers.
        scaling: λ.
        normalize: divide the sum by Σ_t w_t.
    """

    density: float = field(
        default=0.9,
        metadata={"help": "Fraction of entries of τ_t kept after both tails are cut (0.9: ours)."},
    )
    gamma: float = field(
        default=0.01,
        metadata={
            "help": "Fraction of largest-magnitude entries removed as outliers (0.01: ours, mergekit's)."
        },
    )
    scaling: float = field(
        default=1.0, metadata={"help": "λ on the merged task vector (1.0: ours, mergekit's)."}
    )
    normalize: bool = field(
        default=False, metadata={"help": "Divide Σ_t w_t τ_t by Σ_t w_t (default False)."}
    )

    def __post_init__(self) -> None:
        check_probability("density", self.density)
        check_probability("gamma", self.gamma)
        check_number("scaling", self.scaling)
        check_bool("normalize", self.normalize)


@dataclass
class BreadcrumbsTiesConfig(BreadcrumbsConfig):
    """Parameters of Model Breadcrumbs, then TIES's sign election and disjoint merge (mergekit's method).

    Args:
        majority_sign: "sum" or "count", as in :class:`~paperpack.r_tsvm.TiesConfig`.
    """

    majority_sign: SignMethod = field(
        default="sum", metadata={"help": "Sign election: 'sum' of masses (TIES's) or 'count' of votes."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_literal_fields(self)


@dataclass
class DellaLinearConfig:
    """Parameters of DELLA's MagPrune followed by a plain sum of the task vectors (``della_linear``).

    Args:
        density: mean keep probability (1 − p).
        epsilon: ε, the width of the keep-probability range across magnitude ranks.
        rescale: divide each kept entry by its keep probability.
        scaling: λ.
        normalize: divide the sum by Σ_t w_t.
        seed: seeds the random masks (combined with the parameter's name).
    """

    density: float = field(default=0.5, metadata={"help": "Mean keep probability 1 − p (0.5: ours)."})
    epsilon: float = field(
        default=0.1,
        metadata={
            "help": "ε: keep probabilities span [density − ε/2, density + ε/2] by magnitude rank (0.1: ours; "
            "mergekit's epsilon is half of this width)."
        },
    )
    rescale: bool = field(default=True, metadata={"help": "Rescale kept entries by 1 / q_i (the paper's)."})
    scaling: float = field(default=1.0, metadata={"help": "λ on the merged task vector (1.0: ours)."})
    normalize: bool = field(
        default=False, metadata={"help": "Divide Σ_t w_t τ̃_t by Σ_t w_t (default False, as mergekit)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random masks (ours)."})

    def __post_init__(self) -> None:
        check_range("density", self.density, 0.0, 1.0, low_inclusive=False)
        check_range("epsilon", self.epsilon, 0.0, 1.0)
        low, high = self.density - self.epsilon / 2, self.density + self.epsilon / 2
        if low <= 0.0 or high > 1.0:
            raise ConfigError(
                f"`density` ± `epsilon`/2 must lie in (0, 1], got density={self.density!r}, "
                f"epsilon={self.epsilon!r} (range [{low:g}, {high:g}])"
            )
        check_bool("rescale", self.rescale)
        check_number("scaling", self.scaling)
        check_bool("normalize", self.normalize)
        check_int("seed", self.seed, minimum=0)


@dataclass
class DellaConfig(DellaLinearConfig):
    """Parameters of DELLA: MagPrune, then TIES's sign election and disjoint merge.

    Args:
        normalize: disjoint mean (True, the paper's fuse step) or sum.
        majority_sign: "sum" or "count".
    """

    normalize: bool = field(
        default=True, metadata={"help": "Disjoint mean (True, the paper's fuse step) or sum."}
    )
    majority_sign: SignMethod = field(
        default="sum", metadata={"help": "Sign election: 'sum' (TIES's) or 'count'."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_literal_fields(self)


@dataclass
class ConsensusConfig:
    """Parameters of consensus merging.

    Args:
        tall_lambda: λ_t, the TALL mask threshold (one value for every task).
        min_agreement: k, how many TALL masks must keep an entry.
        scaling: α on the masked multi-task vector.
    """

    tall_lambda: float = field(
        default=0.6,
        metadata={
            "help": "λ_t of the TALL masks (paper tunes it per task in [0.2, 0.6]; 0.6: ours, FusionBench's)."
        },
    )
    min_agreement: int = field(
        default=2,
        metadata={"help": "k: an entry is kept when at least k TALL masks keep it (paper's k = 2)."},
    )
    scaling: float = field(
        default=1.0, metadata={"help": "α on the masked multi-task vector (tuned in the paper; 1.0: ours)."}
    )

    def __post_init__(self) -> None:
        check_positive("tall_lambda", self.tall_lambda, allow_zero=True)
        check_int("min_agreement", self.min_agreement, minimum=1)
        check_number("scaling", self.scaling)


@dataclass
class TSVMConfig:
    """Parameters of TSV-M.

    Args:
        alpha: α on the merged task matrix.
        exclude_keys: regular expressions; matching parameters are averaged instead of decomposed.
        svd: "fast" (Gram-matrix eigendecompositions where they are accurate) or "exact" (full SVDs).
        parallel_tol: task matrices within this distance of each other's direction are merged into their mean
            before the decomposition.
    """

    alpha: float = field(
        default=1.0, metadata={"help": "α: θ = θ_0 + α Δ (1.0: FusionBench's; the paper's code tunes it)."}
    )
    exclude_keys: list[str] = field(
        default_factory=list,
        metadata={"help": "Regexes of parameter names averaged instead of decomposed (none: FusionBench's)."},
    )
    svd: SVDMode = field(default="fast", metadata={"help": _SVD_HELP})
    parallel_tol: float = field(default=1e-3, metadata={"help": _PARALLEL_HELP})

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha)
        check_patterns("exclude_keys", self.exclude_keys)
        self.exclude_keys = list(self.exclude_keys)
        _check_spectral(self)


@dataclass
class IsoCConfig:
    """Parameters of Iso-C.

    Args:
        alpha: α on the isotropic task matrix.
        exclude_keys: regular expressions; matching parameters are averaged.
        svd: "fast" or "exact" (see :class:`TSVMConfig`).
    """

    alpha: float = field(
        default=1.0, metadata={"help": "α: θ = θ_0 + α σ̄ U Vᵀ (tuned in the paper; 1.0: FusionBench's)."}
    )
    exclude_keys: list[str] = field(
        default_factory=list,
        metadata={"help": "Regexes of parameter names averaged instead (none: FusionBench's)."},
    )
    svd: SVDMode = field(default="fast", metadata={"help": _SVD_HELP})

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha)
        check_patterns("exclude_keys", self.exclude_keys)
        self.exclude_keys = list(self.exclude_keys)
        _check_spectral(self)


@dataclass
class IsoCTSConfig(IsoCConfig):
    """Parameters of Iso-CTS.

    Args:
        common_space_fraction: f, the share of the rank given to the common subspace.
        parallel_tol: the tolerance of the rule for parallel task matrices (see :class:`TSVMConfig`).
    """

    common_space_fraction: float = field(
        default=0.8,
        metadata={"help": "f: share of the rank r kept for the common subspace (the paper's 0.8)."},
    )
    parallel_tol: float = field(default=1e-3, metadata={"help": _PARALLEL_HELP})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("common_space_fraction", self.common_space_fraction, 0.0, 1.0)


@dataclass
class SlerpConfig:
    """Parameters of SLERP.

    Args:
        t: the interpolation factor; 0 gives the first model, 1 the second.
        dot_threshold: above this |cos Ω| the models are interpolated linearly.
    """

    t: float = field(
        default=0.5, metadata={"help": "t: 0 returns the first model, 1 the second (0.5: ours)."}
    )
    dot_threshold: float = field(
        default=0.9995,
        metadata={"help": "Use linear interpolation when |cos Ω| exceeds this (mergekit's 0.9995)."},
    )

    def __post_init__(self) -> None:
        check_probability("t", self.t)
        check_range("dot_threshold", self.dot_threshold, 0.0, 1.0)


@dataclass
class FisherConfig:
    """Parameters of Fisher merging.

    Args:
        fisher_floor: ε, the smallest Fisher value used.
    """

    fisher_floor: float = field(
        default=1e-6, metadata={"help": "ε: Fisher values are floored at ε (1e-6, as in the paper's code)."}
    )

    def __post_init__(self) -> None:
        check_positive("fisher_floor", self.fisher_floor)


@dataclass
class RegMeanConfig:
    """Parameters of RegMean.

    Args:
        alpha: α, the factor on the off-diagonal entries of each Gram matrix.
    """

    alpha: float = field(
        default=0.6,
        metadata={
            "help": "α: off-diagonal Gram entries are scaled by α (tuned in the paper; 0.6: FusionBench's)."
        },
    )

    def __post_init__(self) -> None:
        check_probability("alpha", self.alpha)


@dataclass
class RTSVMConfig:
    """Parameters of R-TSVM (RESM). Every default is ours: the paper's values are not public.

    Args:
        alpha: α on the merged task matrix.
        outlier_mode: how robust z-scores are computed ("none" turns outlier handling off).
        kappa: κ, the z-score beyond which an entry is an outlier.
        outlier_action: "downweight" (per-task weights), "clip" (winsorise entries) or "both".
        gamma: γ, the strength of the downweighting.
        rank_mode: "fixed" (TSV-M), "sparsity" or "energy".
        eps_rel: ε_rel, the magnitude (relative to the median nonzero |Δ_t|) below which an entry is zero.
        energy_tau: τ, the spectral energy kept per task in "energy" mode.
        k_min: the smallest rank per task.
        exclude_keys: regular expressions of parameter names averaged instead of decomposed.
        svd: "fast" or "exact" (see :class:`TSVMConfig`).
        parallel_tol: the tolerance of the rule for parallel task matrices (see :class:`TSVMConfig`).
    """

    alpha: float = field(
        default=1.0, metadata={"help": "α: θ = θ_0 + α Δ (1.0: ours, as TSV-M in FusionBench)."}
    )
    outlier_mode: OutlierMode = field(
        default="mad",
        metadata={
            "help": "Robust z-scores: 'mad' (median/MAD), 'sigma' (mean/std) or 'none' (off). Ours: 'mad'."
        },
    )
    kappa: float = field(default=3.0, metadata={"help": "κ: entries with |z| > κ are outliers (ours: 3.0)."})
    outlier_action: OutlierAction = field(
        default="downweight",
        metadata={
            "help": "'downweight' (per-task, per-layer ω_t), 'clip' (winsorise) or 'both' (ours: downweight)."
        },
    )
    gamma: float = field(
        default=1.0,
        metadata={"help": "γ in ω_t = 1 / (1 + γ o_t / ō); 0 disables downweighting (ours: 1.0)."},
    )
    rank_mode: RankMode = field(
        default="sparsity",
        metadata={
            "help": "Per-layer rank: 'fixed' (TSV-M's ⌊r/T⌋), 'sparsity' or 'energy' (ours: sparsity)."
        },
    )
    eps_rel: float = field(
        default=1e-3,
        metadata={
            "help": "ε_rel: |Δ_t| ≤ ε_rel · median of the nonzero |Δ_t| counts as zero for the sparsity s_p "
            "(ours; a robust scale that one outlier cannot move)."
        },
    )
    energy_tau: float = field(
        default=0.9, metadata={"help": "τ: spectral energy kept per task in 'energy' mode (ours: 0.9)."}
    )
    k_min: int = field(default=1, metadata={"help": "Smallest rank per task and layer (ours: 1)."})
    exclude_keys: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Regexes of parameter names averaged, not decomposed (ours: none, as TSV-M; "
            "['embed_tokens', 'lm_head'] saves the two largest SVDs of an LLM)."
        },
    )
    svd: SVDMode = field(default="fast", metadata={"help": _SVD_HELP})
    parallel_tol: float = field(default=1e-3, metadata={"help": _PARALLEL_HELP})

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha)
        check_positive("kappa", self.kappa)
        check_positive("gamma", self.gamma, allow_zero=True)
        check_range("eps_rel", self.eps_rel, 0.0, 1.0, high_inclusive=False)
        check_range("energy_tau", self.energy_tau, 0.0, 1.0, low_inclusive=False)
        check_int("k_min", self.k_min, minimum=1)
        check_patterns("exclude_keys", self.exclude_keys)
        self.exclude_keys = list(self.exclude_keys)
        _check_spectral(self)


@dataclass
class ModelStockConfig:
    """Parameters of Model Stock.

    Args:
        filter_wise: one interpolation ratio per row (per output unit) instead of one per tensor.
    """

    filter_wise: bool = field(
        default=False,
        metadata={"help": "One ratio t per row (filter) instead of per tensor (default False: mergekit's)."},
    )

    def __post_init__(self) -> None:
        check_bool("filter_wise", self.filter_wise)


@dataclass
class NuSlerpConfig:
    """Parameters of NuSLERP (mergekit's SLERP by weights, optionally of task vectors).

    Args:
        flatten: interpolate the whole tensor as one vector.
        row_wise: without ``flatten``, interpolate along the first dimension instead of the last.
    """

    flatten: bool = field(
        default=True,
        metadata={
            "help": "Interpolate the whole tensor as one vector (default True; mergekit's nuslerp_flatten)."
        },
    )
    row_wise: bool = field(
        default=False,
        metadata={
            "help": "Without flatten: interpolate vectors along the first dimension instead of the last "
            "(default False; mergekit's nuslerp_row_wise)."
        },
    )

    def __post_init__(self) -> None:
        check_bool("flatten", self.flatten)
        check_bool("row_wise", self.row_wise)


@dataclass
class SCEConfig:
    """Parameters of SCE (select, calculate, erase).

    Args:
        select_topk: the fraction of entries, by variance across the task vectors, that are kept.
    """

    select_topk: float = field(
        default=1.0,
        metadata={
            "help": "Fraction of entries kept by their variance across task vectors (1.0 keeps all: "
            "mergekit's default; the paper tunes it)."
        },
    )

    def __post_init__(self) -> None:
        check_probability("select_topk", self.select_topk)


@dataclass
class PassthroughConfig:
    """Parameters of passthrough (copy one model's tensors, e.g. to stack layer slices).

    Args:
        scale: a factor on the copied tensor (per model, usually with a filter).
    """

    scale: float = field(default=1.0, metadata={"help": "Factor on the copied tensor (1.0: unchanged)."})

    def __post_init__(self) -> None:
        check_number("scale", self.scale)


#: Output dtypes by name (None keeps each tensor's dtype in the base model).
OutputDtype = Literal["float32", "bfloat16", "float16"]
#: What to do when embeddings / LM heads have different vocabulary sizes (without ``tokenizer_source``).
VocabPolicy = Literal["error", "base", "truncate"]
DTYPES: tuple[str, ...] = get_args(OutputDtype)
VOCAB_POLICIES: tuple[str, ...] = get_args(VocabPolicy)


@dataclass(kw_only=True)
class MergeOutputOptions:
    """How a merge writes its output: the fields a recipe and ``paperpack r-tsvm merge`` share.

    :class:`~paperpack.r_tsvm.MergeConfig` extends it; the command builds its flags from it (this module
    imports no torch).

    Args:
        dtype: the output dtype; None keeps the base model's (the first model's without a base).
        vocab_mismatch: embeddings / LM heads of another vocabulary size (without ``tokenizer_source``):
            "error", "base" (keep the base model's tensor) or "truncate" (cut or pad every model's rows to the
            base's vocabulary, by token id).
        max_shard_size: the size of output shards.
        tokenizer_source: None (the base model's tokenizer files are copied), "base", "union" or a model path:
            the output vocabulary, with embeddings and LM heads aligned by token (as mergekit).
        chat_template: None (keep the tokenizer's), "auto" (the most common among the inputs), "chatml" or a
            Jinja template.
    """

    dtype: OutputDtype | None = field(
        default=None,
        metadata={"help": "the output dtype: float32, bfloat16 or float16 (default: the base's)"},
    )
    vocab_mismatch: VocabPolicy = field(
        default="error",
        metadata={
            "help": "embeddings / LM heads of another vocabulary size: error, base (keep the base's tensor) "
            "or truncate (cut or pad every model's rows to the base's vocabulary, by token id)"
        },
    )
    max_shard_size: str = field(
        default="5GB", metadata={"help": "the size of output shards, e.g. 5GB or 500MB"}
    )
    tokenizer_source: str | None = field(
        default=None,
        metadata={
            "help": "the output vocabulary: base, union or a model path, embeddings aligned by token "
            "(default: the base's tokenizer files are copied)"
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "auto (the inputs' most common), chatml, or a Jinja template (default: the tokenizer's)"
        },
    )
