"""Where a whole TSV-M checkpoint merge spends its CPU time: per-task triplets, polar factors, everything else.

Builds (once) the synthetic Llama of ``bench_fast_svd.py`` (base + three fine-tunes, 1e-3 noise) and merges it
in this process with ``svd: fast`` and ``svd: exact`` (``exclude_keys: [embed_tokens, lm_head]``), one thread,
timing with process CPU time the calls that TSV-M's merge makes to ``top_triplets``, ``polar_factor`` and
``parallel_groups``; "rest" is everything else (reading and writing the checkpoints, stacking, the averaged
embeddings and norms, the final products). Then prints the ceiling exact / (fast − triplets): the ratio that a
fast path whose per-task triplets cost nothing would reach. The first merge also pays the process's first-call
costs (lazy imports: about 2 s of CPU), so its "rest" is that much larger. Run from the workspace root:

    OMP_NUM_THREADS=1 uv run --no-sync python packages/r-tsvm/benchmarks/bench_merge_profile.py --layers 1 \\
        --hidden 2048 --intermediate 5632
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from _harness import in_child, llama_spec, load_average, load_json_line

from paperpack.r_tsvm import merge_checkpoints
from paperpack.r_tsvm.methods import tsv

NUM_EXPERTS = 3
STEPS = ("top_triplets", "polar_factor", "parallel_groups")


def timed(spent: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.process_time() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="/tmp/rtsvm-bench", help="where models and outputs go")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--order", nargs=2, default=["fast", "exact"], choices=["fast", "exact"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = llama_spec(args.layers, args.hidden, args.intermediate, args.vocab, NUM_EXPERTS)
    workdir = Path(args.workdir) / spec["name"]
    folders = load_json_line(in_child("models", str(workdir), json.dumps(spec)))["folders"]
    spent: dict[str, float] = {}
    for name in STEPS:
        setattr(tsv, name, timed(spent, name, getattr(tsv, name)))
    totals = {}
    for svd in args.order:
        spent.clear()
        recipe = {
            "merge_method": "tsv_m",
            "base_model": folders["base"],
            "models": [{"model": folders[f"expert{i}"]} for i in range(NUM_EXPERTS)],
            "parameters": {"exclude_keys": ["embed_tokens", "lm_head"], "svd": svd},
            "max_shard_size": "2GB",
        }
        path = workdir / f"profile-{svd}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        output = workdir / f"profile-out-{svd}"
        shutil.rmtree(output, ignore_errors=True)
        before = load_average()
        start = time.process_time()
        merge_checkpoints(str(path), str(output), progress=False)
        total = time.process_time() - start
        shutil.rmtree(output, ignore_errors=True)
        totals[svd] = (total, spent.get("top_triplets", 0.0))
        row = {"svd": svd, "cpu_s": round(total, 1), **{k: round(v, 1) for k, v in spent.items()}}
        row["rest"] = round(total - sum(spent.values()), 1)
        print(json.dumps({**row, "load_before": before, "load_after": load_average()}), flush=True)
    (exact, _), (fast, triplets) = totals["exact"], totals["fast"]
    print(
        f"exact / fast = {exact / fast:.2f}; ceiling exact / (fast − triplets) = {exact / (fast - triplets):.2f}"
    )


if __name__ == "__main__":
    main()
