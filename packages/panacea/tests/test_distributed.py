"""Two gloo ranks: the same ε on every rank, and the step of one process on the union of their batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from paperpack.core.testing.contracts import assert_state_dicts_equal, run_distributed

from .ddp_script import run
from .test_trainer import _assert_close

HERE = Path(__file__).parent


@pytest.mark.slow
def test_ddp_ranks_share_epsilon_and_match_one_process(tmp_path: Path) -> None:
    run_distributed(HERE / "ddp_script.py", str(tmp_path), num_processes=2)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for eps0, eps1 in zip(rank0["epsilons"], rank1["epsilons"], strict=True):
        assert_state_dicts_equal(eps0, eps1)  # bitwise: h0 is averaged before ε is formed
    assert_state_dicts_equal(rank0["weights"], rank1["weights"])
    # One process with the doubled batch (task and harmful) takes the same steps.
    single = run(tmp_path / "single", batch_size=4)
    for mine, theirs in zip(rank0["epsilons"], single["epsilons"], strict=True):
        _assert_close(mine, theirs, rtol=1e-4, atol=1e-7)
    assert_state_dicts_equal(rank0["weights"], single["weights"], atol=1e-6, rtol=1e-5)
