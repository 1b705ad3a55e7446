"""Which harmful examples each micro-batch uses: a pure function of the seed, the position and the rank.

The official code cycles a shuffled ``DataLoader`` over the harmful set, whose position is lost when training
resumes. Here the k-th harmful micro-batch of the run is computed from (seed, k), so a resumed run draws the
batches the uninterrupted run drew, with no iterator state to save, and the ranks of a distributed run split
each global batch without overlap.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int

__all__ = ["HarmfulBatches"]


class HarmfulBatches:
    """Indices of harmful examples per micro-batch: epochs of seeded permutations, cut into global batches.

    Position q (the q-th harmful micro-batch of the run) lies in epoch ``q // per_epoch``; that epoch's
    permutation of the data set is seeded by (seed, epoch), its global batch ``q % per_epoch`` holds
    ``batch_size × world_size`` consecutive indices, and rank r takes the r-th block of ``batch_size``. The
    ``size mod (batch_size × world_size)`` examples left over in an epoch are skipped in that epoch only
    (another permutation leaves out others).

    Args:
        size: examples in the harmful data set.
        batch_size: examples per micro-batch and rank.
        seed: the seed of the permutations.
        rank: this process's rank.
        world_size: the number of processes.

    Raises:
        ConfigError: when the data set is empty or smaller than one global batch.

    Examples:
        >>> from paperpack.panacea.sampling import HarmfulBatches
        >>> batches = HarmfulBatches(10, 2, seed=0, world_size=2)
        >>> other_rank = HarmfulBatches(10, 2, seed=0, rank=1, world_size=2)
        >>> len(batches.indices(0)), set(batches.indices(0)).isdisjoint(other_rank.indices(0))
        (2, True)
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        check_int("batch_size", batch_size, minimum=1)
        check_int("seed", seed, minimum=0)
        check_int("world_size", world_size, minimum=1)
        check_int("rank", rank, minimum=0, maximum=world_size - 1)
        if size == 0:
            raise ConfigError("`harmful_dataset` is empty; Panacea needs harmful examples to compute ε")
        if size < batch_size * world_size:
            raise ConfigError(
                f"`harmful_dataset` has {size} example(s), fewer than one harmful batch: harmful_batch_size "
                f"{batch_size} × {world_size} process(es); add examples or lower harmful_batch_size"
            )
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_epoch = size // (batch_size * world_size)

    @lru_cache(maxsize=2)  # noqa: B019  (one sampler per trainer; two epochs are live at an epoch boundary)
    def _permutation(self, epoch: int) -> list[int]:
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.randperm(self.size, generator=generator).tolist()

    def indices(self, position: int) -> list[int]:
        """The indices of this rank's examples in the harmful micro-batch at ``position`` (0, 1, 2, ...)."""
        check_int("position", position, minimum=0)
        epoch, slot = divmod(position, self.per_epoch)
        start = (slot * self.world_size + self.rank) * self.batch_size
        return self._permutation(epoch)[start : start + self.batch_size]
