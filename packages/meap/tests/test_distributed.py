"""Under a real `accelerate launch` with two processes, each rank draws its own masks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from paperpack.core.testing.contracts import run_distributed

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from paperpack.meap import MEAPCollator, MEAPConfig
    from paperpack.meap.experiment import RecallTask

    tokenizer = RecallTask().tokenizer()
    collator = MEAPCollator(tokenizer, MEAPConfig(seed=5))
    rows = [{"input_ids": list(range(6, 70))}] * 2
    masks = [(collator(rows)["input_ids"] == tokenizer.mask_token_id).tolist() for _ in range(2)]
    with open(f"{sys.argv[1]}/rank{os.environ['RANK']}.json", "w") as out:
        json.dump(masks, out)
    """
)


@pytest.mark.slow
def test_ranks_draw_different_masks(tmp_path: Path) -> None:
    script = tmp_path / "masks.py"
    script.write_text(SCRIPT, encoding="utf-8")
    run_distributed(script, str(tmp_path))
    first, second = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert first != second  # same seed, same data: the rank enters the seed
    assert sum(map(sum, first[0])) == sum(map(sum, second[0])) == 2 * 9  # ⌊0.15·63⌋ per row on both ranks
