r"""The task router: features of a prompt, a small MLP trained on the task prompts, and the routing rule.

Features (``router_features``, ``router_layer``): the mean over the prompt's tokens (or the last token) of a
hidden state of the dense model; layer 0 is the input embedding E[x_t] (no forward pass). The router is an MLP
d → h → n on standardised features, trained with cross-entropy (full batch, AdamW) on the prompts of each
task, a ``router_holdout`` fraction of each task's prompts held out to measure its accuracy.

Routing, one decision per sequence (reused for every generated token):

\[ p = \mathrm{softmax}(\mathrm{router}(f(x)) / T) \]

- if \( \max_i p_i \ge \) ``confidence_threshold``: the single expert \( \arg\max_i p_i \) (weight 1);
- else the ``top_k`` experts by p, weighted by p renormalised over them: the uncertainty fallback for
  out-of-distribution inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from paperpack.merge_router.config import MediatorConfig, RouterFeatures

__all__ = [
    "Router",
    "Routing",
    "decide",
    "embedding_features",
    "hidden_features",
    "pool",
    "save_router",
    "train_router",
]


@dataclass(frozen=True)
class Routing:
    """The routing decision for one sequence.

    Attributes:
        experts: the chosen task names, best first (one when the router is confident).
        weights: w_i per chosen expert, summing to 1.
        confidence: max_i p_i, the router's probability of its best task.
    """

    experts: tuple[str, ...]
    weights: tuple[float, ...]
    confidence: float

    @property
    def key(self) -> tuple[tuple[str, float], ...]:
        """What identifies the routed weights: (task, weight) pairs, weights rounded to 6 decimals."""
        return tuple(
            (name, round(weight, 6)) for name, weight in zip(self.experts, self.weights, strict=True)
        )

    @classmethod
    def forced(cls, task: str) -> Routing:
        """The routing that uses ``task``'s expert alone."""
        return cls((task,), (1.0,), 1.0)


class Router(nn.Module):
    """MLP d → h → n over standardised features; ``forward`` returns the task logits.

    Args:
        in_features: d, the width of the features.
        num_tasks: n.
        hidden_size: h.
    """

    mean: Tensor
    scale: Tensor

    def __init__(self, in_features: int, num_tasks: int, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.hidden = nn.Linear(in_features, hidden_size)
        self.output = nn.Linear(hidden_size, num_tasks)

    def forward(self, features: Tensor) -> Tensor:
        """Task logits for features of shape (batch, d)."""
        x = (features.to(self.mean) - self.mean) / self.scale
        return self.output(nn.functional.gelu(self.hidden(x)))  # type: ignore[no-any-return]


def pool(hidden: Tensor, attention_mask: Tensor, how: RouterFeatures) -> Tensor:
    """Pool (batch, tokens, d) hidden states to (batch, d) over the real tokens: their mean, or the last."""
    mask = attention_mask.to(hidden.device, torch.float32)
    hidden = hidden.float()
    if how == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    positions = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)
    last = (positions * mask).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def embedding_features(
    embedding: Tensor, input_ids: Tensor, attention_mask: Tensor, how: RouterFeatures
) -> Tensor:
    """Layer-0 features: the rows E[x_t] of the input embedding matrix, pooled."""
    return pool(embedding[input_ids.to(embedding.device)], attention_mask, how)


@torch.no_grad()
def hidden_features(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layer: int, how: RouterFeatures
) -> Tensor:
    """Layer-L features: the output of decoder layer L of ``model`` (``hidden_states[L]``), pooled."""
    output = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return pool(output.hidden_states[layer], attention_mask, how)


def decide(logits: Tensor, tasks: Sequence[str], config: MediatorConfig) -> list[Routing]:
    """The routing rule: one expert when max p ≥ ``confidence_threshold``, else the renormalised top-k mix.

    Examples:
        >>> import torch
        >>> from paperpack.merge_router import MediatorConfig
        >>> logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
        >>> decide(logits, ["a", "b", "c"], MediatorConfig())[1].experts
        ('a', 'b')
    """
    probabilities = torch.softmax(logits.double() / config.temperature, dim=-1)
    k = min(config.top_k, len(tasks))
    routings = []
    for row in probabilities:
        values, order = torch.sort(row, descending=True, stable=True)
        confidence = float(values[0])
        if confidence >= config.confidence_threshold or k == 1:
            routings.append(Routing((tasks[int(order[0])],), (1.0,), confidence))
            continue
        top = values[:k] / values[:k].sum()
        routings.append(
            Routing(tuple(tasks[int(i)] for i in order[:k]), tuple(float(w) for w in top), confidence)
        )
    return routings


def _split(labels: Tensor, holdout: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Stratified split: per task, ``round(holdout · count)`` prompts held out (one at least kept)."""
    train, held = [], []
    for task in sorted(set(labels.tolist())):
        rows = (labels == task).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        count = min(round(holdout * len(rows)), len(rows) - 1)
        held.append(rows[:count])
        train.append(rows[count:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def train_router(
    features: Tensor, labels: Tensor, num_tasks: int, config: MediatorConfig
) -> tuple[Router, float | None]:
    """Train the router on (features, task index) pairs; returns it and its held-out accuracy (or None).

    Deterministic for a given ``config.seed``; the global random state is left untouched.
    """
    features = features.float()
    generator = torch.Generator().manual_seed(config.seed)
    train_rows, held_rows = _split(labels.cpu(), config.router_holdout, generator)
    hidden = config.router_hidden_size or 2 * features.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        router = Router(features.shape[1], num_tasks, hidden).to(features.device)
    train_x, train_y = features[train_rows.to(features.device)], labels[train_rows.to(labels.device)]
    router.mean.copy_(train_x.mean(0))
    router.scale.copy_(train_x.std(0, unbiased=False).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(
        router.parameters(), lr=config.router_learning_rate, weight_decay=config.router_weight_decay
    )
    router.train()
    for _ in range(config.router_steps):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(router(train_x), train_y.to(features.device))
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]
        optimizer.step()
    router.eval()
    if len(held_rows) == 0:
        return router, None
    with torch.no_grad():
        predicted = router(features[held_rows.to(features.device)]).argmax(-1).cpu()
    return router, float((predicted == labels.cpu()[held_rows]).float().mean())


def router_metadata(router: Router, config: MediatorConfig) -> dict[str, Any]:
    """What rebuilds the router: its sizes and how its features are read."""
    return {
        "in_features": router.hidden.in_features,
        "hidden_size": router.hidden.out_features,
        "features": config.router_features,
        "layer": config.router_layer,
    }


def save_router(router: Router, path: Path) -> None:
    """Write the router's weights (and its feature standardisation) as a safetensors file."""
    from safetensors.torch import save_file

    state = {key: value.detach().cpu().contiguous() for key, value in router.state_dict().items()}
    save_file(state, path, metadata={"format": "pt"})
