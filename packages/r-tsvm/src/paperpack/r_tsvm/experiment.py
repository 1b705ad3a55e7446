"""Helpful, honest and harmless experts merged by every method: the demo's experiment, as typed results.

From one tiny base model (``tiny_causal_lm()``, "pretrained" on a generic copy task), three experts are
fine-tuned with TRL's ``SFTTrainer`` on the synthetic tasks of :mod:`paperpack.r_tsvm.synthetic`, then merged
by every registered method that merges three models; each merge is scored on all three tasks. A data-mixture
model (the same base trained on the uniform mixture for as many steps as the three experts together) is the
paper's other baseline. Each method's scale (λ or α) is picked on a validation split and reported on a test
split.

A second round plants outliers in the harmless expert's task vector (0.1 % of each decoder matrix's entries
set to 20 robust standard deviations, "preference noise") and compares R-TSVM with and without outlier
handling.

A third round, reported only, tests the sparsity-adaptive rank: the honest expert is fine-tuned again with one
matrix updated only through a fixed random mask of 10 % of its entries, so that its task matrix on that layer
is sparse (90 % zeros) but not low-rank. R-TSVM with the adaptive rank is compared with the same method at
TSV-M's fixed rank, and the singular triplets each method keeps on that layer are counted.

Examples:
    >>> from paperpack.r_tsvm.experiment import ExperimentSettings, run_experiment
    >>> tiny = ExperimentSettings(pretrain_steps=4, expert_steps=2, num_train=64, num_eval=16, grid=(1.0,))
    >>> results = run_experiment([0], tiny)  # doctest: +SKIP
    >>> results.task_means("clean", "tsv_m")["mean"]  # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import contextlib
import statistics as stats
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from paperpack.r_tsvm import synthetic
from paperpack.r_tsvm.merge import merge_state_dicts, merge_tensors
from paperpack.r_tsvm.methods._common import numerical_rank
from paperpack.r_tsvm.methods.tsv import tsv_budget
from paperpack.r_tsvm.registry import get_method, list_methods

__all__ = [
    "EMBEDDING_KEY",
    "PLANTED_MERGES",
    "SCALE_PARAMETERS",
    "SPARSE_KEY",
    "SPARSE_MERGES",
    "SPARSE_SETUPS",
    "SPARSE_TASK",
    "Evaluator",
    "ExperimentResults",
    "ExperimentSettings",
    "Group",
    "Scored",
    "SeedResult",
    "SeedSetup",
    "SparseRound",
    "kept_ranks",
    "masked_gradient",
    "merged_methods",
    "plant_outliers",
    "prepare_seed",
    "run_experiment",
    "run_seed",
    "update_mask",
]

#: The parameter each method's strength is tuned by (picked on validation); methods absent here have none.
SCALE_PARAMETERS: dict[str, str] = {
    "task_arithmetic": "scaling",
    "ties": "scaling",
    "dare_linear": "scaling",
    "dare_ties": "scaling",
    "breadcrumbs": "scaling",
    "breadcrumbs_ties": "scaling",
    "della": "scaling",
    "della_linear": "scaling",
    "consensus": "scaling",
    "tsv_m": "alpha",
    "iso_c": "alpha",
    "iso_cts": "alpha",
    "r_tsvm": "alpha",
}
#: The merges run on the experts with planted outliers: row label -> (method, parameters).
PLANTED_MERGES: dict[str, tuple[str, dict[str, Any]]] = {
    "task_arithmetic": ("task_arithmetic", {}),
    "tsv_m": ("tsv_m", {}),
    "r_tsvm (default)": ("r_tsvm", {}),
    "r_tsvm (outliers off)": ("r_tsvm", {"outlier_mode": "none"}),
    "r_tsvm (clip)": ("r_tsvm", {"outlier_action": "clip"}),
}
#: The sparse-layer round: which expert and which matrix. Chosen before the round was first run, not tuned:
#: the last MLP matrix before the head, 64 x 256.
SPARSE_TASK = "honest"
SPARSE_KEY = "model.layers.1.mlp.down_proj.weight"
#: Setup label -> the fraction of the sparse matrix's entries the mask lets train. ``0.0`` (the design note's
#: literal setup, the layer not trained at all) also works; it is left out to keep the demo's cost down.
SPARSE_SETUPS: dict[str, float] = {"masked 10 %": 0.1}
#: The merges of the sparse-layer round: row label -> (method, parameters, parameters on the sparse layer
#: only).
SPARSE_MERGES: dict[str, tuple[str, dict[str, Any], dict[str, Any] | None]] = {
    "tsv_m": ("tsv_m", {}, None),
    "r_tsvm (rank fixed)": ("r_tsvm", {"rank_mode": "fixed"}, None),
    "r_tsvm (adaptive rank)": ("r_tsvm", {"rank_mode": "sparsity"}, None),
    "r_tsvm (adaptive on the sparse layer only)": (
        "r_tsvm",
        {"rank_mode": "fixed"},
        {"rank_mode": "sparsity"},
    ),
}
#: The embedding, sparse in every expert (vocabulary rows no task uses never move).
EMBEDDING_KEY = "model.embed_tokens.weight"

#: The row groups of a seed's results: the clean experts, the planted outliers, the sparse-layer round.
Group = Literal["clean", "planted", "sparse"]
#: Wraps each loop (``items, description -> items``), e.g. a demo's progress bar.
Progress = Callable[[Sequence[Any], str], Iterable[Any]]


@dataclass(frozen=True)
class ExperimentSettings:
    """The experiment's budget (defaults: the demo's full scale).

    Attributes:
        pretrain_steps: SFT steps of the base model on the generic copy task.
        expert_steps: SFT steps of each expert (the mixture trains three times as many).
        num_train: training examples per task (and of the pretraining task).
        num_eval: validation and test examples per task.
        grid: the scales (λ or α) tried on validation for methods that have one.
        pretrain_lr: the base model's learning rate.
        expert_lr: the experts' and the mixture's learning rate.
        statistics_examples: training examples per expert for RegMean's Gram matrices (Fisher merging uses
            the first half of them).
    """

    pretrain_steps: int = 250
    expert_steps: int = 100
    num_train: int = 1600
    num_eval: int = 96
    grid: tuple[float, ...] = (0.3, 0.6, 1.0, 1.5)
    pretrain_lr: float = 3e-3
    expert_lr: float = 1e-3
    statistics_examples: int = 64


@dataclass(frozen=True)
class Scored:
    """One model's test accuracy per task, and the scale its merge used (None: not a scaled merge).

    Attributes:
        scores: task -> test accuracy, in :data:`~paperpack.r_tsvm.synthetic.TASKS` order.
        scale: the scale picked on validation, or None.
    """

    scores: dict[str, float]
    scale: float | None = None

    @property
    def mean(self) -> float:
        """The mean accuracy over the tasks."""
        return stats.mean(self.scores.values())


@dataclass(frozen=True)
class SparseRound:
    """The sparse-layer round of one seed and one setup.

    Attributes:
        rows: row label -> test scores: the re-trained expert (``"expert: honest (sparse layer)"``) and each
            merge of :data:`SPARSE_MERGES`.
        kept: merge label -> singular triplets each task contributes on :data:`SPARSE_KEY`.
        embedding_kept: merge label -> the same on :data:`EMBEDDING_KEY`.
        sparsity: R-TSVM's sparsity s_p on the sparse layer.
        k_cap: TSV-M's per-task budget ⌊r/T⌋ on the sparse layer.
        zeros: the fraction of exact zeros in the sparse expert's task matrix there.
    """

    rows: dict[str, Scored]
    kept: dict[str, list[int]]
    embedding_kept: dict[str, list[int]]
    sparsity: float
    k_cap: int
    zeros: float


@dataclass(frozen=True)
class SeedResult:
    """Everything one seed measured.

    Attributes:
        seed: the seed.
        clean: row label -> scores: the base model, each expert, the data mixture and every method's merge.
        planted: row label -> scores on the experts with outliers planted in the harmless one.
        clean_outliers_off: R-TSVM with outlier handling off, on the clean experts.
        sparse: setup label (:data:`SPARSE_SETUPS`) -> its sparse-layer round.
    """

    seed: int
    clean: dict[str, Scored]
    planted: dict[str, Scored]
    clean_outliers_off: Scored
    sparse: dict[str, SparseRound]

    def rows(self, group: Group) -> dict[str, Scored]:
        """The rows of one group; the sparse round's are labelled ``"<setup>: <row>"``."""
        if group == "sparse":
            return {
                f"{setup}: {label}": scored
                for setup, round_ in self.sparse.items()
                for label, scored in round_.rows.items()
            }
        return self.clean if group == "clean" else self.planted


@dataclass(frozen=True)
class ExperimentResults:
    """The results of every seed.

    Attributes:
        settings: the budget they ran with.
        seeds: one result per seed, in order.
    """

    settings: ExperimentSettings
    seeds: list[SeedResult]

    def task_means(self, group: Group, row: str) -> dict[str, float]:
        """Test accuracy per task averaged over the seeds, and ``"mean"``: their mean over the tasks."""
        scores = [result.rows(group)[row].scores for result in self.seeds]
        means = {task: stats.mean(s[task] for s in scores) for task in synthetic.TASKS}
        means["mean"] = stats.mean(means[task] for task in synthetic.TASKS)
        return means

    def kept_totals(self, setup: str, row: str, *, embedding: bool = False) -> list[int]:
        """Each seed's total kept triplets (over the tasks) of one sparse-round merge, on one layer."""
        return [
            sum(result.sparse[setup].embedding_kept[row] if embedding else result.sparse[setup].kept[row])
            for result in self.seeds
        ]


def merged_methods() -> list[str]:
    """Every registered method that merges three models (not the aliases, nor SLERP, NuSLERP, passthrough)."""
    return [
        name
        for name in list_methods()
        if get_method(name).name == name and get_method(name).max_models is None
    ]


def _sft(
    model: Any, tokenizer: Any, datasets: list[list[dict[str, str]]], *, steps: int, lr: float, seed: int
) -> None:
    """Train ``model`` in place with TRL's SFTTrainer on the uniform mixture of ``datasets``."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl.trainer.sft_config import SFTConfig

    from paperpack.core.hf import training_args
    from paperpack.r_tsvm.mixture import mixture_trainer

    with tempfile.TemporaryDirectory() as folder:
        args = training_args(
            folder,
            cls=SFTConfig,
            max_steps=steps,
            learning_rate=lr,
            per_device_train_batch_size=32,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=10,
            weight_decay=0.0,
            max_length=32,
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            seed=seed,
        )
        trainer = mixture_trainer(
            model, [Dataset.from_list(examples) for examples in datasets], args, processing_class=tokenizer
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()


def _copy(model: Any) -> Any:
    """A fresh model with ``model``'s weights.

    ``copy.deepcopy`` is not safe after training: TRL's SFTTrainer replaces ``model.forward`` with a closure
    over the original model, so a deep copy would keep running the original's forward.
    """
    fresh = type(model)(model.config)
    fresh.load_state_dict(model.state_dict())
    return fresh


def _state(model: Any) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _scores(model: Any, encoded: dict[str, dict[str, Tensor]]) -> dict[str, float]:
    return {task: synthetic.accuracy(model, batch) for task, batch in encoded.items()}


def plant_outliers(base: dict[str, Tensor], expert: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Set 0.1 % of each decoder matrix's task-vector entries to ±20 robust standard deviations.

    Args:
        base: the base model's state dict.
        expert: the expert's state dict (not modified).
        seed: picks the entries and their signs.

    Returns:
        The expert with planted outliers (matrices outside the decoder layers unchanged).
    """
    generator = torch.Generator().manual_seed(seed)
    planted = {}
    for key, weight in expert.items():
        delta = weight - base[key]
        if delta.dim() == 2 and ".layers." in key:
            scale = 1.4826 * (delta - delta.median()).abs().median()
            count = max(1, delta.numel() // 1000)
            index = torch.randperm(delta.numel(), generator=generator)[:count]
            signs = torch.randint(0, 2, (count,), generator=generator).float() * 2 - 1
            delta = delta.clone()
            delta.view(-1)[index] = 20 * scale * signs
        planted[key] = base[key] + delta
    return planted


def update_mask(shape: Sequence[int], density: float, seed: int) -> Tensor:
    """A boolean mask holding ``density`` of the entries at random (exactly ⌊density · n⌋ of them).

    Examples:
        >>> from paperpack.r_tsvm.experiment import update_mask
        >>> int(update_mask((8, 16), 0.25, seed=0).sum())
        32
    """
    count = int(density * torch.Size(shape).numel())
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(torch.Size(shape).numel(), dtype=torch.bool)
    mask[torch.randperm(mask.numel(), generator=generator)[:count]] = True
    return mask.reshape(*shape)


@contextlib.contextmanager
def masked_gradient(model: Any, key: str, mask: Tensor) -> Iterator[None]:
    """Zero the gradient of parameter ``key`` outside ``mask`` while the block runs.

    With AdamW and no weight decay an entry whose gradient is always zero never moves, so the task matrix of
    that parameter is exactly zero outside the mask.
    """
    parameter = dict(model.named_parameters())[key]
    handle = parameter.register_hook(lambda grad: grad * mask.to(grad.dtype))
    try:
        yield
    finally:
        handle.remove()


def kept_ranks(
    base: dict[str, Tensor],
    experts: Sequence[dict[str, Tensor]],
    key: str,
    method: str,
    params: dict[str, Any],
) -> list[int]:
    """How many singular triplets each task contributes to the merge of ``key``.

    That is the method's rank k_t (TSV-M's budget, or R-TSVM's reported k_t) capped at the task matrix's
    numerical rank, as :func:`~paperpack.r_tsvm.methods.tsv.tsv_combine` keeps. Covers ``tsv_m`` and
    ``r_tsvm`` without clipping (clipping changes the task matrices before the decomposition).
    """
    tensors = [expert[key] for expert in experts]
    deltas = torch.stack([tensor - base[key] for tensor in tensors]).float()
    if method == "tsv_m":
        ranks = [tsv_budget(deltas.shape[1:], len(tensors))] * len(tensors)
    else:
        spec = get_method(method)
        _, report = spec.merge_with_report(base[key], tensors, config=spec.make_config(params), key=key)
        ranks = report["ranks"]
    nonzero = numerical_rank(torch.linalg.svdvals(deltas), deltas.shape)
    return [min(k, n) for k, n in zip(ranks, nonzero, strict=True)]


class Evaluator:
    """Merges, loads and scores state dicts, picking each method's scale on the validation split.

    Args:
        model: a model of the base's architecture, whose weights each scoring replaces.
        base: the base model's state dict θ_0.
        validation: task -> encoded validation split (:func:`~paperpack.r_tsvm.synthetic.encode`).
        test: task -> encoded test split.
    """

    def __init__(
        self,
        model: Any,
        base: dict[str, Tensor],
        validation: dict[str, dict[str, Tensor]],
        test: dict[str, dict[str, Tensor]],
    ) -> None:
        self.model, self.base, self.validation, self.test = model, base, validation, test

    def score(self, state: dict[str, Tensor], split: Literal["validation", "test"]) -> dict[str, float]:
        """Task -> accuracy of the model with weights ``state`` on ``split``."""
        self.model.load_state_dict(state)
        return _scores(self.model, self.validation if split == "validation" else self.test)

    def best(
        self,
        method: str,
        experts: Sequence[dict[str, Tensor]],
        grid: Sequence[float],
        *,
        seed: int,
        statistics: list[dict[str, Tensor]] | None = None,
        layer: tuple[str, dict[str, Any]] | None = None,
        **params: Any,
    ) -> Scored:
        """Test scores of the merge whose scale does best on validation, and that scale.

        ``layer`` (a parameter name and parameters) merges that one parameter with those parameters on top.
        """
        spec = get_method(method)
        if spec.randomized:
            params["seed"] = seed
        scale = SCALE_PARAMETERS.get(method)
        candidates: Sequence[float | None] = grid if scale else (None,)
        best: tuple[float, float | None, dict[str, Tensor]] | None = None
        for value in candidates:
            kwargs: dict[str, Any] = {**params, **({scale: value} if scale else {})}
            merged = merge_state_dicts(
                method, self.base if spec.uses_base else None, experts, statistics=statistics, **kwargs
            )
            if layer is not None:
                key, extra = layer
                tensors = [expert[key] for expert in experts]
                merged[key] = merge_tensors(method, self.base[key], tensors, key=key, **{**kwargs, **extra})
            mean = stats.mean(self.score(merged, "validation").values())
            if best is None or mean > best[0]:
                best = (mean, value, merged)
        assert best is not None  # the grid is never empty
        return Scored(self.score(best[2], "test"), best[1])


def _sparse_round(
    model: Any,
    tokenizer: Any,
    train: list[dict[str, str]],
    experts: list[dict[str, Tensor]],
    evaluator: Evaluator,
    *,
    density: float,
    seed: int,
    settings: ExperimentSettings,
) -> SparseRound:
    """Re-train the honest expert with :data:`SPARSE_KEY` updated through a mask; merge; count kept ranks."""
    base = evaluator.base
    expert = _copy(model)
    mask = update_mask(base[SPARSE_KEY].shape, density, seed)
    with masked_gradient(expert, SPARSE_KEY, mask):
        _sft(expert, tokenizer, [train], steps=settings.expert_steps, lr=settings.expert_lr, seed=seed)
    index = synthetic.TASKS.index(SPARSE_TASK)
    sparse_experts = list(experts)
    sparse_experts[index] = _state(expert)
    rows = {f"expert: {SPARSE_TASK} (sparse layer)": Scored(evaluator.score(sparse_experts[index], "test"))}
    kept: dict[str, list[int]] = {}
    embedding: dict[str, list[int]] = {}
    for label, (method, params, on_layer) in SPARSE_MERGES.items():
        layer = None if on_layer is None else (SPARSE_KEY, on_layer)
        rows[label] = evaluator.best(method, sparse_experts, settings.grid, seed=seed, layer=layer, **params)
        kept[label] = kept_ranks(base, sparse_experts, SPARSE_KEY, method, {**params, **(on_layer or {})})
        embedding[label] = kept_ranks(base, sparse_experts, EMBEDDING_KEY, method, params)
    delta = sparse_experts[index][SPARSE_KEY] - base[SPARSE_KEY]
    _, report = get_method("r_tsvm").merge_with_report(
        base[SPARSE_KEY], [e[SPARSE_KEY] for e in sparse_experts], key=SPARSE_KEY
    )
    return SparseRound(
        rows=rows,
        kept=kept,
        embedding_kept=embedding,
        sparsity=float(report["sparsity"]),
        k_cap=int(report["k_cap"]),
        zeros=float((delta == 0).float().mean()),
    )


def _loop(progress: Progress | None, items: Sequence[Any], description: str) -> Iterable[Any]:
    return items if progress is None else progress(items, description)


@dataclass
class SeedSetup:
    """What every use of a seed starts from: the pretrained base, the task data and the trained experts.

    Attributes:
        seed: the seed everything was made from.
        model: the pretrained base model (never trained further).
        tokenizer: its tokenizer.
        data: task -> train, validation and test examples.
        validation: task -> the encoded validation split.
        test: task -> the encoded test split.
        base: the base model's state dict θ_0.
        experts: the experts' state dicts θ_t, in :data:`~paperpack.r_tsvm.synthetic.TASKS` order.
        expert_models: the trained expert models, in the same order.
    """

    seed: int
    model: Any
    tokenizer: Any
    data: dict[str, synthetic.TaskData]
    validation: dict[str, dict[str, Tensor]]
    test: dict[str, dict[str, Tensor]]
    base: dict[str, Tensor]
    experts: list[dict[str, Tensor]]
    expert_models: list[Any]

    def evaluator(self) -> Evaluator:
        """An :class:`Evaluator` of merges of these experts, on a copy of the base model."""
        return Evaluator(_copy(self.model), self.base, self.validation, self.test)


def prepare_seed(seed: int, settings: ExperimentSettings, *, progress: Progress | None = None) -> SeedSetup:
    """Pretrain the base model, make the task data and fine-tune one expert per task, all from ``seed``.

    Args:
        seed: seeds the model, the data and the training.
        settings: the budget.
        progress: wraps the loop over the experts (``items, description -> items``).

    Returns:
        The base, the data and the experts (the start of :func:`run_seed`).
    """
    from paperpack.core.hf import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(seed=seed)
    pretraining = synthetic.make_pretraining(settings.num_train, seed=seed)
    _sft(model, tokenizer, [pretraining], steps=settings.pretrain_steps, lr=settings.pretrain_lr, seed=seed)
    data = {
        task: synthetic.make_task(task, num_train=settings.num_train, num_eval=settings.num_eval, seed=seed)
        for task in synthetic.TASKS
    }
    expert_models = []
    for task in _loop(progress, synthetic.TASKS, f"seed {seed}: experts"):
        expert = _copy(model)
        _sft(
            expert,
            tokenizer,
            [data[task].train],
            steps=settings.expert_steps,
            lr=settings.expert_lr,
            seed=seed,
        )
        expert_models.append(expert)
    return SeedSetup(
        seed=seed,
        model=model,
        tokenizer=tokenizer,
        data=data,
        validation={task: synthetic.encode(tokenizer, d.validation) for task, d in data.items()},
        test={task: synthetic.encode(tokenizer, d.test) for task, d in data.items()},
        base=_state(model),
        experts=[_state(expert) for expert in expert_models],
        expert_models=expert_models,
    )


def run_seed(seed: int, settings: ExperimentSettings, *, progress: Progress | None = None) -> SeedResult:
    """Train the base, three experts and a mixture from ``seed``; merge with every method; score everything.

    Args:
        seed: seeds the model, the data, the training and the random methods.
        settings: the budget.
        progress: wraps the loops over experts and methods (``items, description -> items``).

    Returns:
        The seed's scores, planted-outlier round and sparse-layer round.
    """
    from paperpack.core.data import causal_lm_batches
    from paperpack.r_tsvm.statistics import compute_fisher, compute_gram

    setup = prepare_seed(seed, settings, progress=progress)
    model, tokenizer, data, test = setup.model, setup.tokenizer, setup.data, setup.test
    base, experts = setup.base, setup.experts
    clean: dict[str, Scored] = {"base model": Scored(_scores(model, test))}
    fishers, grams = [], []
    for task, expert in zip(synthetic.TASKS, setup.expert_models, strict=True):
        clean[f"expert: {task}"] = Scored(_scores(expert, test))
        examples = data[task].train[: settings.statistics_examples]
        batches = causal_lm_batches(
            tokenizer, [e["prompt"] + e["completion"] for e in examples], batch_size=16
        )
        fishers.append(compute_fisher(expert, batches[: len(batches) // 2]))
        grams.append(compute_gram(expert, batches))
    mixture = _copy(model)
    steps = 3 * settings.expert_steps
    _sft(mixture, tokenizer, [d.train for d in data.values()], steps=steps, lr=settings.expert_lr, seed=seed)
    clean["data mixture (uniform)"] = Scored(_scores(mixture, test))

    evaluator = setup.evaluator()
    for name in _loop(progress, merged_methods(), f"seed {seed}: merges"):
        statistic = get_method(name).statistic
        chosen = fishers if statistic == "fisher" else grams if statistic == "gram" else None
        clean[name] = evaluator.best(name, experts, settings.grid, seed=seed, statistics=chosen)

    planted_experts = [experts[0], experts[1], plant_outliers(base, experts[2], seed)]
    planted = {"expert: harmless (planted)": Scored(evaluator.score(planted_experts[2], "test"))}
    for label, (method, params) in PLANTED_MERGES.items():
        planted[label] = evaluator.best(method, planted_experts, settings.grid, seed=seed, **params)
    clean_off = evaluator.best("r_tsvm", experts, settings.grid, seed=seed, outlier_mode="none")
    sparse = {
        setup: _sparse_round(
            model,
            tokenizer,
            data[SPARSE_TASK].train,
            experts,
            evaluator,
            density=density,
            seed=seed,
            settings=settings,
        )
        for setup, density in SPARSE_SETUPS.items()
    }
    return SeedResult(seed=seed, clean=clean, planted=planted, clean_outliers_off=clean_off, sparse=sparse)


def run_experiment(
    seeds: Sequence[int],
    settings: ExperimentSettings | None = None,
    *,
    progress: Progress | None = None,
) -> ExperimentResults:
    """Run :func:`run_seed` for every seed.

    Args:
        seeds: the seeds, e.g. ``[0, 1, 2]``.
        settings: the budget (default: :class:`ExperimentSettings`, the demo's full scale).
        progress: wraps each loop (``items, description -> items``), e.g. a demo's progress bar.

    Returns:
        The results of every seed, in order.
    """
    settings = settings or ExperimentSettings()
    return ExperimentResults(
        settings,
        [run_seed(seed, settings, progress=progress) for seed in _loop(progress, list(seeds), "seeds")],
    )
