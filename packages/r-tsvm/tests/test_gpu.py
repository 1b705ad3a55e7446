"""The merge methods and checkpoint merges on a CUDA device give the CPU's results (run by the nox gpu sessions)."""

from __future__ import annotations

import pytest
import torch

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.testing.contracts import assert_state_dicts_equal
from paperpack.r_tsvm import get_method, list_methods, merge_checkpoints, merge_tensors

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).name == n])
def test_methods_on_cuda_match_the_cpu(name):
    spec = get_method(name)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(48, 40, generator=g)
    count = 2 if name == "slerp" else 3
    models = [base + 0.1 * torch.randn(48, 40, generator=g) for _ in range(count)]
    stats = None
    if spec.statistic == "fisher":
        stats = [torch.rand(48, 40, generator=g) for _ in models]
    elif spec.statistic == "gram":
        stats = [torch.eye(40) + 0.1 for _ in models]
    cpu = merge_tensors(name, base, models, statistics=stats, key="layer.weight")
    cuda = merge_tensors(
        name,
        base.cuda(),
        [m.cuda() for m in models],
        statistics=None if stats is None else [s.cuda() for s in stats],
        key="layer.weight",
    )
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "tsv_m", "iso_c", "iso_cts", "r_tsvm"])
def test_checkpoint_merge_on_cuda_matches_the_cpu(model_dirs, tmp_path, method):
    recipe = {
        "merge_method": method,
        "base_model": str(model_dirs["base"]),
        "models": [{"model": str(model_dirs[f"expert{i}"])} for i in range(3)]
        + [{"model": str(model_dirs["lora"])}],
    }
    cpu = merge_checkpoints(recipe, tmp_path / "cpu", progress=False)
    cuda = merge_checkpoints(recipe, tmp_path / "cuda", progress=False, device="cuda")
    assert_state_dicts_equal(load_state_dict(cuda), load_state_dict(cpu), atol=1e-4, rtol=1e-4)
