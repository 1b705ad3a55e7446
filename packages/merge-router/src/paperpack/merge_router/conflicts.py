r"""Parameter conflict per unit, d_l, and the choice of the units that are routed.

The paper plots a per-layer "conflict ratio" d_l but does not define it (a reviewer asks). Three measures, all
on the task vectors τ_i = θ_i − θ_0 of the n experts, summed over the tensors of a unit (so a unit's value
weighs its tensors by their size):

- ``sign`` (default): each expert's τ_i is trimmed to its ``trim_density`` fraction of largest-magnitude
  entries (per tensor, TIES's trim: the paper's "parameter denoising"); among the coordinates where at least
  one trimmed τ_i is nonzero, d_l is the fraction where both a positive and a negative one occur:

  \[ d_l = \frac{\#\{c : \exists i, j,\ \hat\tau_{i,c} > 0 > \hat\tau_{j,c}\}}
  {\#\{c : \exists i,\ \hat\tau_{i,c} \ne 0\}} \]

- ``cosine``: one minus the mean pairwise cosine similarity of the experts' task vectors over the unit,
  \( d_l = 1 - \frac{2}{n(n-1)} \sum_{i<j} \cos(\tau_i, \tau_j) \) (pairs with a zero vector are left out).
- ``l2_var``: the variance of the task vectors around their mean over their mean square,
  \( d_l = \sum_i \lVert\tau_i - \bar\tau\rVert^2 / \sum_i \lVert\tau_i\rVert^2 \in [0, 1 - 1/n] \) for
  orthogonal or opposed vectors: the share of the experts' changes that averaging loses.

A unit whose task vectors are all zero has d_l = 0 under every measure.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from paperpack.merge_router.config import ConflictMeasure, MediatorConfig
from paperpack.merge_router.inputs import ModelSource, walk_experts
from paperpack.merge_router.topk import (
    CHUNK_SIZE,
    KeptMask,
    chunks,
    kept_count,
    magnitude_bits,
    magnitude_threshold,
)
from paperpack.merge_router.units import unit_of

__all__ = [
    "ConflictAccumulator",
    "gram_terms",
    "l2_var_terms",
    "layer_conflicts",
    "select_routed",
    "sign_terms",
]


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _task_vector(base: Tensor, tensor: Tensor) -> Tensor:
    dtype = _compute_dtype(tensor)
    return tensor.to(dtype) - base.to(dtype)


def _task_vectors(base: Tensor, tensors: Sequence[Tensor], piece: slice) -> Tensor:
    """The n task vectors of one chunk of a tensor's flat entries, stacked (n × chunk)."""
    flat = base.reshape(-1)[piece]
    return torch.stack([_task_vector(flat, tensor.reshape(-1)[piece]) for tensor in tensors])


def sign_terms(
    base: Tensor, tensors: Sequence[Tensor], trim_density: float, *, chunk_size: int = CHUNK_SIZE
) -> tuple[float, float]:
    """(coordinates in sign conflict, coordinates voted on) of one tensor, after trimming each τ_i.

    Each τ_i keeps its ⌈δN⌉ largest-magnitude entries (ties: the lower index), found in chunks by
    :func:`~paperpack.merge_router.topk.magnitude_threshold`; then the votes are counted chunk by chunk, so
    no temporary holds more than ``chunk_size`` entries per expert.
    """
    flat_base = base.reshape(-1)
    numel = flat_base.numel()
    pieces = chunks(numel, chunk_size)
    k = kept_count(numel, trim_density) if numel else 0
    width = 64 if _compute_dtype(tensors[0]) == torch.float64 else 32

    def bits_of(flat: Tensor) -> Callable[[], Iterator[Tensor]]:
        return lambda: (magnitude_bits(_task_vector(flat_base[p], flat[p])) for p in pieces)

    flats = [tensor.reshape(-1) for tensor in tensors]
    masks = [KeptMask(magnitude_threshold(bits_of(flat), numel, k, width=width)) for flat in flats]
    conflicted = voted = 0
    for piece in pieces:
        taus = _task_vectors(base, tensors, piece)
        kept = torch.stack([mask(magnitude_bits(tau)) for mask, tau in zip(masks, taus, strict=True)])
        positive = (kept & (taus > 0)).any(dim=0)
        negative = (kept & (taus < 0)).any(dim=0)
        conflicted += int((positive & negative).sum())
        voted += int((positive | negative).sum())
    return float(conflicted), float(voted)


def l2_var_terms(
    base: Tensor, tensors: Sequence[Tensor], *, chunk_size: int = CHUNK_SIZE
) -> tuple[float, float]:
    """(Σ_i ‖τ_i − τ̄‖², Σ_i ‖τ_i‖²) of one tensor, summed chunk by chunk in float64."""
    spread = total = 0.0
    for piece in chunks(base.numel(), chunk_size):
        taus = _task_vectors(base, tensors, piece)
        spread += float((taus - taus.mean(dim=0)).double().square().sum())
        total += float(taus.double().square().sum())
    return spread, total


def gram_terms(base: Tensor, tensors: Sequence[Tensor], *, chunk_size: int = CHUNK_SIZE) -> Tensor:
    """G_ij = ⟨τ_i, τ_j⟩ of one tensor (n × n, float64), summed chunk by chunk."""
    gram = torch.zeros(len(tensors), len(tensors), dtype=torch.float64)
    for piece in chunks(base.numel(), chunk_size):
        taus = _task_vectors(base, tensors, piece).double()
        gram += (taus @ taus.T).cpu()
    return gram


@dataclass
class _Sums:
    numerator: float = 0.0
    denominator: float = 0.0
    gram: Tensor | None = None


@dataclass
class ConflictAccumulator:
    """Sums each tensor's conflict terms into its unit; :meth:`result` gives d_l per unit.

    Args:
        measure: ``sign``, ``cosine`` or ``l2_var``.
        trim_density: the sign measure's trim.
    """

    measure: ConflictMeasure = "sign"
    trim_density: float = 0.2
    _units: dict[str, _Sums] = field(default_factory=dict, init=False, repr=False)

    def add(self, unit: str, base: Tensor, tensors: Sequence[Tensor]) -> None:
        """Add one tensor (the base's and each expert's) to ``unit``."""
        sums = self._units.setdefault(unit, _Sums())
        if self.measure == "cosine":
            gram = gram_terms(base, tensors)
            sums.gram = gram if sums.gram is None else sums.gram + gram
            return
        if self.measure == "sign":
            numerator, denominator = sign_terms(base, tensors, self.trim_density)
        else:
            numerator, denominator = l2_var_terms(base, tensors)
        sums.numerator += numerator
        sums.denominator += denominator

    def result(self) -> dict[str, float]:
        """d_l per unit, in the order the units were first added."""
        return {unit: self._value(sums) for unit, sums in self._units.items()}

    def _value(self, sums: _Sums) -> float:
        if self.measure != "cosine":
            return sums.numerator / sums.denominator if sums.denominator > 0 else 0.0
        if sums.gram is None:
            return 0.0
        norms = sums.gram.diagonal().sqrt()
        cosines = [
            float(sums.gram[i, j] / (norms[i] * norms[j]))
            for i in range(len(norms))
            for j in range(i + 1, len(norms))
            if norms[i] > 0 and norms[j] > 0
        ]
        return 1.0 - sum(cosines) / len(cosines) if cosines else 0.0


def layer_conflicts(
    base: ModelSource,
    experts: Mapping[str, ModelSource],
    config: MediatorConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """Measure d_l, the parameter conflict between the experts, for every unit of the model.

    Streams through model folders one key at a time (memory: one tensor per expert); state dicts in memory
    work too. Integer buffers are skipped.

    Args:
        base: θ_0: a model folder or a state dict.
        experts: task name → a model folder, PEFT LoRA adapter folder or state dict (the same kind as
            ``base``), at least two.
        config: ``conflict``, ``trim_density`` and ``unit`` are read; the defaults when None.
        device: where the arithmetic runs.
        progress: show a progress bar over tensors.

    Returns:
        d_l per unit (``model.layers.3``, or a module with ``unit="module"``), in the model's key order.

    Raises:
        ConfigError: for bad task names or fewer than two experts.
        CheckpointError: for experts of another architecture or with other shapes.

    Examples:
        >>> import torch
        >>> from paperpack.merge_router import layer_conflicts
        >>> base = {"model.layers.0.w.weight": torch.zeros(4), "model.layers.1.w.weight": torch.zeros(4)}
        >>> a = {"model.layers.0.w.weight": torch.ones(4), "model.layers.1.w.weight": torch.ones(4)}
        >>> b = {"model.layers.0.w.weight": torch.ones(4), "model.layers.1.w.weight": -torch.ones(4)}
        >>> layer_conflicts(base, {"a": a, "b": b}, MediatorConfig(trim_density=1.0))
        {'model.layers.0': 0.0, 'model.layers.1': 1.0}
    """
    config = config or MediatorConfig()
    accumulator = ConflictAccumulator(config.conflict, config.trim_density)
    for group in walk_experts(base, experts, device=device, progress=progress):
        if group.base is None or not group.base.is_floating_point():
            continue
        accumulator.add(unit_of(group.key, config.unit), group.base, group.tensors)
    return accumulator.result()


def select_routed(
    conflicts: Mapping[str, float], config: MediatorConfig, routable: Collection[str] | None = None
) -> list[str]:
    """The units whose d_l passes the threshold, among ``routable`` (default: all), in ``conflicts``' order.

    - ``zscore``: d_l > μ + z·σ, with μ and σ the mean and population standard deviation over the routable
      units (none is routed when σ = 0);
    - ``topk``: the ⌈f·U⌉ routable units with the largest d_l (f = ``threshold``, U their count; ties go to
      the earlier unit);
    - ``absolute``: d_l > ``threshold``.

    Examples:
        >>> conflicts = {"a": 0.1, "b": 0.2, "c": 0.9, "d": 0.15}
        >>> select_routed(conflicts, MediatorConfig())
        ['c']
        >>> select_routed(conflicts, MediatorConfig(threshold_mode="topk", threshold=0.5))
        ['b', 'c']
    """
    candidates = [unit for unit in conflicts if routable is None or unit in routable]
    if not candidates:
        return []
    values = [conflicts[unit] for unit in candidates]
    threshold = config.resolved_threshold
    if config.threshold_mode == "zscore":
        mean, std = statistics.fmean(values), statistics.pstdev(values)
        chosen = {unit for unit in candidates if std > 0 and conflicts[unit] > mean + threshold * std}
    elif config.threshold_mode == "topk":
        count = kept_count(len(candidates), threshold)
        order = sorted(range(len(candidates)), key=lambda i: (-values[i], i))
        chosen = {candidates[i] for i in order[:count]}
    else:
        chosen = {unit for unit in candidates if conflicts[unit] > threshold}
    return [unit for unit in candidates if unit in chosen]
