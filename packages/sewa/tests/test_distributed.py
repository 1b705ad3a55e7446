"""Under accelerate DDP (2 CPU processes, gloo) every rank selects the same snapshots and holds the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.testing.contracts import assert_state_dicts_equal, run_distributed

SCRIPT = Path(__file__).with_name("ddp_train.py")


@pytest.mark.slow
def test_every_rank_selects_the_same_snapshots(tmp_path: Path) -> None:
    run_distributed(SCRIPT, str(tmp_path), "offload", num_processes=2)
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert summaries[0]["world_size"] == 2
    assert summaries[0]["steps"] == [3, 4, 5, 6]
    assert summaries[0] == summaries[1]
    assert len(summaries[0]["indices"]) == 2
    assert_state_dicts_equal(
        load_state_dict(tmp_path / "rank0.safetensors"), load_state_dict(tmp_path / "rank1.safetensors")
    )
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        f"snapshot-00000000{s}.safetensors" for s in (3, 4, 5, 6)
    ]
    # A batch-norm network: the ranks end with the same statistics, averaged (rank 0's snapshots, as DDP
    # broadcasts buffers from rank 0) or re-estimated on both ranks' shards and averaged across them.
    for update_bn in (False, True):
        ranks = [load_state_dict(tmp_path / f"rank{r}-bn-{update_bn}.safetensors") for r in range(2)]
        assert "body.1.running_var" in ranks[0]
        assert_state_dicts_equal(ranks[0], ranks[1])
