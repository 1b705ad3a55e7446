"""The merge methods on plain tensors: one module per method (its config is in ``paperpack.r_tsvm.config``).

Every function has the signature ``fn(base, tensors, *, weights=None, config=None, key=None) -> Tensor``
(``fisher`` and ``regmean`` also take ``statistics``), computes in float32 and returns the inputs' dtype.
"""

from paperpack.r_tsvm.methods.breadcrumbs import breadcrumbs_merge
from paperpack.r_tsvm.methods.consensus import consensus_merge
from paperpack.r_tsvm.methods.dare import dare_linear_merge, dare_ties_merge
from paperpack.r_tsvm.methods.della import della_merge
from paperpack.r_tsvm.methods.fisher import fisher_merge
from paperpack.r_tsvm.methods.iso import iso_c_merge, iso_cts_merge
from paperpack.r_tsvm.methods.linear import linear_merge, task_arithmetic_merge
from paperpack.r_tsvm.methods.r_tsvm import r_tsvm_merge, r_tsvm_merge_with_report
from paperpack.r_tsvm.methods.regmean import regmean_merge
from paperpack.r_tsvm.methods.slerp import slerp_merge
from paperpack.r_tsvm.methods.ties import ties_merge
from paperpack.r_tsvm.methods.tsv import tsv_m_merge

__all__ = [
    "breadcrumbs_merge",
    "consensus_merge",
    "dare_linear_merge",
    "dare_ties_merge",
    "della_merge",
    "fisher_merge",
    "iso_c_merge",
    "iso_cts_merge",
    "linear_merge",
    "r_tsvm_merge",
    "r_tsvm_merge_with_report",
    "regmean_merge",
    "slerp_merge",
    "task_arithmetic_merge",
    "ties_merge",
    "tsv_m_merge",
]
