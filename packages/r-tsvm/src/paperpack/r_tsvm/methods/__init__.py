"""The merge methods on plain tensors: one module per method (its config is in ``paperpack.r_tsvm.config``).

Every function has the signature ``fn(base, tensors, *, weights=None, config=None, key=None) -> Tensor``
(``fisher`` and ``regmean`` also take ``statistics``; methods with per-model parameters take
``model_configs``), computes in float32 and returns the inputs' dtype.
"""

from paperpack.r_tsvm.methods.breadcrumbs import breadcrumbs_merge, breadcrumbs_ties_merge
from paperpack.r_tsvm.methods.consensus import consensus_merge
from paperpack.r_tsvm.methods.dare import dare_linear_merge, dare_ties_merge
from paperpack.r_tsvm.methods.della import della_linear_merge, della_merge
from paperpack.r_tsvm.methods.fisher import fisher_merge
from paperpack.r_tsvm.methods.iso import iso_c_merge, iso_cts_merge
from paperpack.r_tsvm.methods.linear import linear_merge, task_arithmetic_merge
from paperpack.r_tsvm.methods.model_stock import model_stock_merge
from paperpack.r_tsvm.methods.nuslerp import nuslerp_merge
from paperpack.r_tsvm.methods.passthrough import passthrough_merge
from paperpack.r_tsvm.methods.r_tsvm import r_tsvm_merge, r_tsvm_merge_with_report
from paperpack.r_tsvm.methods.regmean import regmean_merge
from paperpack.r_tsvm.methods.sce import sce_merge
from paperpack.r_tsvm.methods.slerp import slerp_merge
from paperpack.r_tsvm.methods.ties import ties_merge
from paperpack.r_tsvm.methods.tsv import tsv_m_merge

__all__ = [
    "breadcrumbs_merge",
    "breadcrumbs_ties_merge",
    "consensus_merge",
    "dare_linear_merge",
    "dare_ties_merge",
    "della_linear_merge",
    "della_merge",
    "fisher_merge",
    "iso_c_merge",
    "iso_cts_merge",
    "linear_merge",
    "model_stock_merge",
    "nuslerp_merge",
    "passthrough_merge",
    "r_tsvm_merge",
    "r_tsvm_merge_with_report",
    "regmean_merge",
    "sce_merge",
    "slerp_merge",
    "task_arithmetic_merge",
    "ties_merge",
    "tsv_m_merge",
]
