"""Under accelerate DDP (2 CPU processes, gloo) every rank ends with the same adapter, preheated on both shards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.testing.contracts import assert_state_dicts_equal, run_distributed
from paperpack.hrp_lora import hrp_initialize

SCRIPT = Path(__file__).with_name("ddp_script.py")


def _script_module():
    spec = importlib.util.spec_from_file_location("hrp_ddp_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ranks_end_identical_and_average_their_gradients(tmp_path: Path) -> None:
    run_distributed(SCRIPT, str(tmp_path), num_processes=2)
    assert (tmp_path / "world0.txt").read_text() == "2"
    for kind in ("regression", "trainer"):
        ranks = [load_state_dict(tmp_path / f"{kind}-rank{r}.safetensors") for r in range(2)]
        assert_state_dicts_equal(ranks[0], ranks[1])
    # Averaged gradients of the two half-batches are the gradient of the whole batch: the DDP preheat equals a
    # single process preheating on the full batches (a rank that ignored the other's shard would differ).
    script = _script_module()
    single = hrp_initialize(
        script.regression_model(),
        script.REGRESSION,
        script.regression_batches(),
        script.REGRESSION_HRP,
        loss_fn=script.mse,
    )
    distributed = load_state_dict(tmp_path / "regression-rank0.safetensors")
    for name, tensor in script.adapter_state(single).items():
        torch.testing.assert_close(distributed[name], tensor, rtol=0, atol=1e-5)
    half = hrp_initialize(
        script.regression_model(), script.REGRESSION,
        [(x[0::2], y[0::2]) for x, y in script.regression_batches()], script.REGRESSION_HRP, loss_fn=script.mse,
    )  # fmt: skip
    name = next(n for n in distributed if "lora_A" in n)
    assert not torch.allclose(script.adapter_state(half)[name], distributed[name], atol=1e-3)
