"""paperpack.core.distributed in one process and under accelerate launch with two CPU processes."""

import json
from pathlib import Path

import pytest
import torch

from paperpack.core.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_object,
    check_same_across_ranks,
    is_distributed,
    is_main_process,
    local_rank,
    rank,
    world_size,
)
from paperpack.core.testing.contracts import run_distributed

HERE = Path(__file__).parent


def test_one_process_is_rank_zero_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (rank(), world_size(), local_rank(), is_main_process(), is_distributed()) == (0, 1, 0, True, False)
    barrier()
    value = torch.tensor([1.0, 2.0])
    mean = all_reduce_mean(value)
    assert torch.equal(mean, value) and mean is not value
    assert broadcast_object({"a": 1}) == {"a": 1}
    check_same_across_ranks("seed", 3)
    with pytest.raises(TypeError, match="needs a floating tensor"):
        all_reduce_mean(torch.tensor([1, 2]))


def test_the_launcher_variables_count_before_the_process_group_exists(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (rank(), world_size(), local_rank(), is_main_process()) == (3, 4, 1, False)


@pytest.mark.slow
def test_two_processes(tmp_path):
    run_distributed(HERE / "_distributed_helpers.py", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for me, result in enumerate(ranks):
        assert (result["rank"], result["world_size"], result["distributed"], result["main"]) == (
            me,
            2,
            True,
            me == 0,
        )
        assert result["mean"] == [0.5, 5.0]
        assert result["broadcast"] == {"from": 0}
    assert ranks[0]["mismatch"] is None
    assert ranks[1]["mismatch"] == "`seed` must be the same on every process, got 1 on rank 1 and 0 on rank 0"
