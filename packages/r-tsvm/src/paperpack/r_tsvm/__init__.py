"""paperpack-r-tsvm: streaming model merging and R-TSVM / RESM (arXiv:2502.06876).

The public names are imported on first use, so that ``paperpack r-tsvm --help`` and ``paperpack merge --help``
(which import this package) do not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paperpack.core.lazy import lazy_exports

if TYPE_CHECKING:
    from paperpack.r_tsvm.config import BreadcrumbsConfig as BreadcrumbsConfig
    from paperpack.r_tsvm.config import BreadcrumbsTiesConfig as BreadcrumbsTiesConfig
    from paperpack.r_tsvm.config import ConsensusConfig as ConsensusConfig
    from paperpack.r_tsvm.config import DareConfig as DareConfig
    from paperpack.r_tsvm.config import DareTiesConfig as DareTiesConfig
    from paperpack.r_tsvm.config import DellaConfig as DellaConfig
    from paperpack.r_tsvm.config import DellaLinearConfig as DellaLinearConfig
    from paperpack.r_tsvm.config import FisherConfig as FisherConfig
    from paperpack.r_tsvm.config import IsoCConfig as IsoCConfig
    from paperpack.r_tsvm.config import IsoCTSConfig as IsoCTSConfig
    from paperpack.r_tsvm.config import LinearConfig as LinearConfig
    from paperpack.r_tsvm.config import ModelStockConfig as ModelStockConfig
    from paperpack.r_tsvm.config import NuSlerpConfig as NuSlerpConfig
    from paperpack.r_tsvm.config import PassthroughConfig as PassthroughConfig
    from paperpack.r_tsvm.config import RegMeanConfig as RegMeanConfig
    from paperpack.r_tsvm.config import RTSVMConfig as RTSVMConfig
    from paperpack.r_tsvm.config import SCEConfig as SCEConfig
    from paperpack.r_tsvm.config import SlerpConfig as SlerpConfig
    from paperpack.r_tsvm.config import TaskArithmeticConfig as TaskArithmeticConfig
    from paperpack.r_tsvm.config import TiesConfig as TiesConfig
    from paperpack.r_tsvm.config import TSVMConfig as TSVMConfig
    from paperpack.r_tsvm.lora import LoraAdapter as LoraAdapter
    from paperpack.r_tsvm.lora import lora_delta_state_dict as lora_delta_state_dict
    from paperpack.r_tsvm.merge import merge_state_dicts as merge_state_dicts
    from paperpack.r_tsvm.merge import merge_tensors as merge_tensors
    from paperpack.r_tsvm.methods.breadcrumbs import breadcrumbs_merge as breadcrumbs_merge
    from paperpack.r_tsvm.methods.breadcrumbs import breadcrumbs_ties_merge as breadcrumbs_ties_merge
    from paperpack.r_tsvm.methods.consensus import consensus_merge as consensus_merge
    from paperpack.r_tsvm.methods.dare import dare_linear_merge as dare_linear_merge
    from paperpack.r_tsvm.methods.dare import dare_ties_merge as dare_ties_merge
    from paperpack.r_tsvm.methods.della import della_linear_merge as della_linear_merge
    from paperpack.r_tsvm.methods.della import della_merge as della_merge
    from paperpack.r_tsvm.methods.fisher import fisher_merge as fisher_merge
    from paperpack.r_tsvm.methods.iso import iso_c_merge as iso_c_merge
    from paperpack.r_tsvm.methods.iso import iso_cts_merge as iso_cts_merge
    from paperpack.r_tsvm.methods.linear import linear_merge as linear_merge
    from paperpack.r_tsvm.methods.linear import task_arithmetic_merge as task_arithmetic_merge
    from paperpack.r_tsvm.methods.model_stock import model_stock_merge as model_stock_merge
    from paperpack.r_tsvm.methods.nuslerp import nuslerp_merge as nuslerp_merge
    from paperpack.r_tsvm.methods.passthrough import passthrough_merge as passthrough_merge
    from paperpack.r_tsvm.methods.r_tsvm import r_tsvm_merge as r_tsvm_merge
    from paperpack.r_tsvm.methods.regmean import regmean_merge as regmean_merge
    from paperpack.r_tsvm.methods.sce import sce_merge as sce_merge
    from paperpack.r_tsvm.methods.slerp import slerp_merge as slerp_merge
    from paperpack.r_tsvm.methods.ties import ties_merge as ties_merge
    from paperpack.r_tsvm.methods.tsv import tsv_m_merge as tsv_m_merge
    from paperpack.r_tsvm.mixture import mix_datasets as mix_datasets
    from paperpack.r_tsvm.mixture import mixture_trainer as mixture_trainer
    from paperpack.r_tsvm.mixture import train_on_mixture as train_on_mixture
    from paperpack.r_tsvm.recipe import MergeConfig as MergeConfig
    from paperpack.r_tsvm.recipe import ModelSpec as ModelSpec
    from paperpack.r_tsvm.recipe import SliceSource as SliceSource
    from paperpack.r_tsvm.recipe import SliceSpec as SliceSpec
    from paperpack.r_tsvm.registry import MergeMethod as MergeMethod
    from paperpack.r_tsvm.registry import get_method as get_method
    from paperpack.r_tsvm.registry import list_methods as list_methods
    from paperpack.r_tsvm.registry import register_method as register_method
    from paperpack.r_tsvm.statistics import compute_fisher as compute_fisher
    from paperpack.r_tsvm.statistics import compute_gram as compute_gram
    from paperpack.r_tsvm.streaming import TensorGroup as TensorGroup
    from paperpack.r_tsvm.streaming import merge_checkpoints as merge_checkpoints
    from paperpack.r_tsvm.streaming import walk_checkpoints as walk_checkpoints

__getattr__, __dir__ = lazy_exports(__name__)
