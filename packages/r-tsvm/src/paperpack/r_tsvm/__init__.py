"""paperpack-r-tsvm: streaming model merging and R-TSVM / RESM (arXiv:2502.06876).

The public names are imported on first use, so that ``paperpack r-tsvm --help`` and ``paperpack merge --help``
(which import this package) do not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.r_tsvm.config import (
        BreadcrumbsConfig,
        ConsensusConfig,
        DareConfig,
        DareTiesConfig,
        DellaConfig,
        FisherConfig,
        IsoCConfig,
        IsoCTSConfig,
        LinearConfig,
        RegMeanConfig,
        RTSVMConfig,
        SlerpConfig,
        TaskArithmeticConfig,
        TiesConfig,
        TSVMConfig,
    )
    from paperpack.r_tsvm.lora import LoraAdapter, lora_delta_state_dict
    from paperpack.r_tsvm.merge import merge_state_dicts, merge_tensors
    from paperpack.r_tsvm.methods.breadcrumbs import breadcrumbs_merge
    from paperpack.r_tsvm.methods.consensus import consensus_merge
    from paperpack.r_tsvm.methods.dare import dare_linear_merge, dare_ties_merge
    from paperpack.r_tsvm.methods.della import della_merge
    from paperpack.r_tsvm.methods.fisher import fisher_merge
    from paperpack.r_tsvm.methods.iso import iso_c_merge, iso_cts_merge
    from paperpack.r_tsvm.methods.linear import linear_merge, task_arithmetic_merge
    from paperpack.r_tsvm.methods.r_tsvm import r_tsvm_merge
    from paperpack.r_tsvm.methods.regmean import regmean_merge
    from paperpack.r_tsvm.methods.slerp import slerp_merge
    from paperpack.r_tsvm.methods.ties import ties_merge
    from paperpack.r_tsvm.methods.tsv import tsv_m_merge
    from paperpack.r_tsvm.mixture import mix_datasets, mixture_trainer, train_on_mixture
    from paperpack.r_tsvm.recipe import MergeConfig, ModelSpec
    from paperpack.r_tsvm.registry import MergeMethod, get_method, list_methods, register_method
    from paperpack.r_tsvm.statistics import compute_fisher, compute_gram
    from paperpack.r_tsvm.streaming import TensorGroup, merge_checkpoints, walk_checkpoints

__all__ = [
    "BreadcrumbsConfig",
    "ConsensusConfig",
    "DareConfig",
    "DareTiesConfig",
    "DellaConfig",
    "FisherConfig",
    "IsoCConfig",
    "IsoCTSConfig",
    "LinearConfig",
    "LoraAdapter",
    "MergeConfig",
    "MergeMethod",
    "ModelSpec",
    "RTSVMConfig",
    "RegMeanConfig",
    "SlerpConfig",
    "TSVMConfig",
    "TaskArithmeticConfig",
    "TensorGroup",
    "TiesConfig",
    "breadcrumbs_merge",
    "compute_fisher",
    "compute_gram",
    "consensus_merge",
    "dare_linear_merge",
    "dare_ties_merge",
    "della_merge",
    "fisher_merge",
    "get_method",
    "iso_c_merge",
    "iso_cts_merge",
    "linear_merge",
    "list_methods",
    "lora_delta_state_dict",
    "merge_checkpoints",
    "merge_state_dicts",
    "merge_tensors",
    "mix_datasets",
    "mixture_trainer",
    "r_tsvm_merge",
    "register_method",
    "regmean_merge",
    "slerp_merge",
    "task_arithmetic_merge",
    "ties_merge",
    "train_on_mixture",
    "tsv_m_merge",
    "walk_checkpoints",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BreadcrumbsConfig": "paperpack.r_tsvm.config",
        "ConsensusConfig": "paperpack.r_tsvm.config",
        "DareConfig": "paperpack.r_tsvm.config",
        "DareTiesConfig": "paperpack.r_tsvm.config",
        "DellaConfig": "paperpack.r_tsvm.config",
        "FisherConfig": "paperpack.r_tsvm.config",
        "IsoCConfig": "paperpack.r_tsvm.config",
        "IsoCTSConfig": "paperpack.r_tsvm.config",
        "LinearConfig": "paperpack.r_tsvm.config",
        "RTSVMConfig": "paperpack.r_tsvm.config",
        "RegMeanConfig": "paperpack.r_tsvm.config",
        "SlerpConfig": "paperpack.r_tsvm.config",
        "TSVMConfig": "paperpack.r_tsvm.config",
        "TaskArithmeticConfig": "paperpack.r_tsvm.config",
        "TiesConfig": "paperpack.r_tsvm.config",
        "LoraAdapter": "paperpack.r_tsvm.lora",
        "lora_delta_state_dict": "paperpack.r_tsvm.lora",
        "merge_state_dicts": "paperpack.r_tsvm.merge",
        "merge_tensors": "paperpack.r_tsvm.merge",
        "breadcrumbs_merge": "paperpack.r_tsvm.methods.breadcrumbs",
        "consensus_merge": "paperpack.r_tsvm.methods.consensus",
        "dare_linear_merge": "paperpack.r_tsvm.methods.dare",
        "dare_ties_merge": "paperpack.r_tsvm.methods.dare",
        "della_merge": "paperpack.r_tsvm.methods.della",
        "fisher_merge": "paperpack.r_tsvm.methods.fisher",
        "iso_c_merge": "paperpack.r_tsvm.methods.iso",
        "iso_cts_merge": "paperpack.r_tsvm.methods.iso",
        "linear_merge": "paperpack.r_tsvm.methods.linear",
        "task_arithmetic_merge": "paperpack.r_tsvm.methods.linear",
        "r_tsvm_merge": "paperpack.r_tsvm.methods.r_tsvm",
        "regmean_merge": "paperpack.r_tsvm.methods.regmean",
        "slerp_merge": "paperpack.r_tsvm.methods.slerp",
        "ties_merge": "paperpack.r_tsvm.methods.ties",
        "tsv_m_merge": "paperpack.r_tsvm.methods.tsv",
        "mix_datasets": "paperpack.r_tsvm.mixture",
        "mixture_trainer": "paperpack.r_tsvm.mixture",
        "train_on_mixture": "paperpack.r_tsvm.mixture",
        "MergeConfig": "paperpack.r_tsvm.recipe",
        "ModelSpec": "paperpack.r_tsvm.recipe",
        "MergeMethod": "paperpack.r_tsvm.registry",
        "get_method": "paperpack.r_tsvm.registry",
        "list_methods": "paperpack.r_tsvm.registry",
        "register_method": "paperpack.r_tsvm.registry",
        "compute_fisher": "paperpack.r_tsvm.statistics",
        "compute_gram": "paperpack.r_tsvm.statistics",
        "TensorGroup": "paperpack.r_tsvm.streaming",
        "merge_checkpoints": "paperpack.r_tsvm.streaming",
        "walk_checkpoints": "paperpack.r_tsvm.streaming",
    },
)
