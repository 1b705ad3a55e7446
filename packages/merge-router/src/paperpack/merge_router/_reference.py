"""Slow, literal references of Mediator's pieces, for the tests: plain Python over flat lists.

Each function follows the formula in the docs of the fast module it checks, coordinate by coordinate, with no
vectorisation and no shared helpers, so that a mistake in the fast code is not repeated here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "reference_average",
    "reference_conflicts",
    "reference_decide",
    "reference_select_routed",
    "reference_sparse",
    "reference_unit",
]


def reference_unit(key: str, unit: str) -> str:
    """A key's unit: up to its first all-digit component (decoder_block), else without its last component."""
    parts = key.split(".")
    if unit == "decoder_block":
        for position, part in enumerate(parts):
            if part.isdigit():
                return ".".join(parts[: position + 1])
    return ".".join(parts[:-1]) if len(parts) > 1 else key


def _flat(tensor: Tensor) -> list[float]:
    return [float(value) for value in tensor.double().reshape(-1).tolist()]


def _trimmed(tau: list[float], density: float) -> list[float]:
    """τ with all but its k = ⌈δN⌉ largest-magnitude entries set to 0 (ties: the lower index first)."""
    k = min(len(tau), max(1, math.ceil(round(density * len(tau), 6))))
    order = sorted(range(len(tau)), key=lambda i: (-abs(tau[i]), i))
    keep = set(order[:k])
    return [value if i in keep else 0.0 for i, value in enumerate(tau)]


def reference_conflicts(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]],
    measure: str,
    *,
    trim_density: float = 0.2,
    unit: str = "decoder_block",
) -> dict[str, float]:
    """d_l per unit, from the definitions in :mod:`paperpack.merge_router.conflicts`, by counting."""
    taus: dict[str, list[list[float]]] = {}
    for key, theta0 in base.items():
        if not theta0.is_floating_point():
            continue
        vectors = [
            [a - b for a, b in zip(_flat(expert[key]), _flat(theta0), strict=True)] for expert in experts
        ]
        if measure == "sign":
            vectors = [_trimmed(tau, trim_density) for tau in vectors]
        rows = taus.setdefault(reference_unit(key, unit), [[] for _ in experts])
        for row, tau in zip(rows, vectors, strict=True):
            row.extend(tau)
    result = {}
    for name, rows in taus.items():
        if measure == "sign":
            voted = conflicted = 0
            for c in range(len(rows[0])):
                signs = {1 if row[c] > 0 else -1 for row in rows if row[c] != 0}
                voted += bool(signs)
                conflicted += len(signs) == 2
            result[name] = conflicted / voted if voted else 0.0
        elif measure == "cosine":
            cosines = []
            for i in range(len(rows)):
                for j in range(i + 1, len(rows)):
                    norm_i = math.sqrt(sum(x * x for x in rows[i]))
                    norm_j = math.sqrt(sum(x * x for x in rows[j]))
                    if norm_i > 0 and norm_j > 0:
                        cosines.append(
                            sum(x * y for x, y in zip(rows[i], rows[j], strict=True)) / norm_i / norm_j
                        )
            result[name] = 1 - sum(cosines) / len(cosines) if cosines else 0.0
        else:
            mean = [sum(column) / len(rows) for column in zip(*rows, strict=True)]
            spread = sum((x - m) ** 2 for row in rows for x, m in zip(row, mean, strict=True))
            total = sum(x * x for row in rows for x in row)
            result[name] = spread / total if total > 0 else 0.0
    return result


def reference_select_routed(conflicts: Mapping[str, float], mode: str, threshold: float) -> list[str]:
    """The routed units by the rule of ``select_routed``, written out."""
    names = list(conflicts)
    values = [conflicts[name] for name in names]
    if mode == "zscore":
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return [name for name in names if std > 0 and conflicts[name] > mean + threshold * std]
    if mode == "topk":
        count = min(len(names), max(1, math.ceil(round(threshold * len(names), 6))))
        ranked = sorted(names, key=lambda name: (-conflicts[name], names.index(name)))[:count]
        return [name for name in names if name in ranked]
    return [name for name in names if conflicts[name] > threshold]


def reference_sparse(expert: Tensor, dense: Tensor, density: float) -> dict[int, float]:
    """S = TopK(θ − D, ⌈δN⌉) by magnitude, as {flat index: value}."""
    delta = [a - b for a, b in zip(_flat(expert), _flat(dense), strict=True)]
    k = min(len(delta), max(1, math.ceil(round(density * len(delta), 6))))
    order = sorted(range(len(delta)), key=lambda i: -abs(delta[i]))
    return {i: delta[i] for i in order[:k]}


def reference_decide(
    logits: Sequence[float], tasks: Sequence[str], temperature: float, confidence_threshold: float, top_k: int
) -> tuple[tuple[str, ...], tuple[float, ...], float]:
    """(experts, weights, confidence) for one sequence's router logits, by the rule in the router's docs."""
    scaled = [value / temperature for value in logits]
    largest = max(scaled)
    exps = [math.exp(value - largest) for value in scaled]
    p = [value / sum(exps) for value in exps]
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    confidence = p[order[0]]
    if confidence >= confidence_threshold or top_k == 1:
        return (tasks[order[0]],), (1.0,), confidence
    chosen = order[: min(top_k, len(p))]
    total = sum(p[i] for i in chosen)
    return tuple(tasks[i] for i in chosen), tuple(p[i] / total for i in chosen), confidence


def reference_average(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Plain averaging, mean_i θ_i, of every floating-point tensor."""
    return {
        key: sum((state[key].double() for state in states), torch.zeros(())) / len(states)
        for key in states[0]
        if states[0][key].is_floating_point()
    }
