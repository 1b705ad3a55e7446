"""Two gloo ranks: the same ε on every rank, and the step of one process on the union of their batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from paperpack.core.testing.contracts import assert_state_dicts_equal, run_distributed

from .ddp_script import CASES, run
from .test_trainer import _assert_close

HERE = Path(__file__).parent


@pytest.mark.slow
def test_ddp_ranks_share_epsilon_and_match_one_process(tmp_path: Path) -> None:
    """For each case of pass 2 (ddp_script.CASES): the gradient is averaged once, after pass 2."""
    run_distributed(HERE / "ddp_script.py", str(tmp_path), num_processes=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for case in CASES:
        _check_case(case, ranks[0][case], ranks[1][case], tmp_path)
    assert ranks[0]["clamped"]["clamped"] == [1.0, 1.0]
    assert ranks[0]["clamp-on"]["clamped"] == [0.0, 0.0]


def _check_case(case: str, rank0: dict[str, Any], rank1: dict[str, Any], tmp_path: Path) -> None:
    for eps0, eps1 in zip(rank0["epsilons"], rank1["epsilons"], strict=True):
        assert_state_dicts_equal(eps0, eps1)  # bitwise: h0 is averaged before ε is formed
    assert_state_dicts_equal(rank0["weights"], rank1["weights"])
    # One process with the doubled batch (task and harmful) takes the same steps.
    single = run(tmp_path / f"single-{case}", batch_size=4, case=case)
    assert rank0["clamped"] == single["clamped"], case
    for mine, theirs in zip(rank0["epsilons"], single["epsilons"], strict=True):
        _assert_close(mine, theirs, rtol=1e-4, atol=1e-7)
    assert_state_dicts_equal(rank0["weights"], single["weights"], atol=1e-6, rtol=1e-5)
