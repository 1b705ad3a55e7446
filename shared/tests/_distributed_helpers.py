"""Run under accelerate with 2 CPU processes: every helper of paperpack.core.distributed, results per rank."""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from paperpack.core.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_object,
    check_same_across_ranks,
    is_distributed,
    is_main_process,
    rank,
    world_size,
)
from paperpack.core.errors import ConfigError


def main(out: Path) -> None:
    PartialState(cpu=True)
    me = rank()
    result = {
        "rank": me,
        "world_size": world_size(),
        "distributed": is_distributed(),
        "main": is_main_process(),
        "mean": all_reduce_mean(torch.tensor([float(me), 10.0 * me], dtype=torch.float64)).tolist(),
        "broadcast": broadcast_object({"from": me}),
    }
    check_same_across_ranks("seed", 7)
    try:
        check_same_across_ranks("seed", me)
        result["mismatch"] = None
    except ConfigError as error:
        result["mismatch"] = str(error)
    barrier()
    (out / f"rank{me}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
