"""``PanaceaTrainer``: a ``transformers.Trainer`` whose training step adds Panacea's two harmful passes.

The Panacea part (argument checks, the harmful batches, ``training_step``, the logged metrics, the state kept
with each checkpoint and the final perturbation) lives in :class:`PanaceaTrainerMixin`, which
:class:`PanaceaTrainer` and :class:`~paperpack.panacea.PanaceaSFTTrainer` share.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

from paperpack.core.errors import ConfigError
from paperpack.core.hf import STATE_FOLDER, StatefulCallback, read_callback_state
from paperpack.panacea.config import PanaceaConfig
from paperpack.panacea.perturbation import apply_perturbation, epsilon_scale, global_norm, select_parameters
from paperpack.panacea.sampling import HarmfulBatches

__all__ = ["PanaceaTrainer", "PanaceaTrainerMixin"]

logger = logging.getLogger(__name__)

# Type checkers see the mixin as a Trainer, so its methods may use the Trainer's attributes; at run time it is
# a plain class placed before Trainer (or SFTTrainer) in the bases.
if TYPE_CHECKING:
    _Base = Trainer
else:
    _Base = object


@dataclass
class _Unit:
    """A piece of the harmful batch and the weight of its loss (the units' weighted losses sum to h)."""

    inputs: dict[str, Any]
    weight: float


@dataclass
class _PanaceaStep:
    """What pass 1 leaves for pass 2 of the same optimizer step."""

    chunks: list[dict[str, Any]]  # the harmful micro-batches, as prepared for the model
    num_items: Any  # num_items_in_batch over all of them (and over processes, as the Trainer counts)
    loss: float  # h(w), mean across processes
    grad_norm: float  # ‖h0‖ over the perturbed parameters
    h0: dict[str, Tensor]  # of every trainable parameter


def _choose_pieces(setting: int | None, model: nn.Module) -> int:
    """``perturbed_pass_pieces``, or for None: 2 when half of the parameters or more are trainable, else 1."""
    if setting is not None:
        return setting
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return 2 if 2 * trainable >= total else 1


def _row_pieces(batch: dict[str, Any], pieces: int) -> list[tuple[dict[str, Any], float]]:
    """``batch`` cut into at most ``pieces`` slices of rows, each with its share of the rows.

    Every tensor whose first dimension is the batch's is sliced; anything else is passed to each slice.
    """
    tensors = [value for value in batch.values() if isinstance(value, Tensor) and value.dim() > 0]
    first = batch.get("input_ids", tensors[0] if tensors else None)
    rows = first.shape[0] if isinstance(first, Tensor) and first.dim() > 0 else 1
    count = max(1, min(pieces, rows))
    if count == 1:
        return [(batch, 1.0)]
    bounds = [rows * k // count for k in range(count + 1)]
    return [
        (
            {
                key: value[start:stop]
                if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == rows
                else value
                for key, value in batch.items()
            },
            (stop - start) / rows,
        )
        for start, stop in itertools.pairwise(bounds)
    ]


def _random_state(device: torch.device) -> list[Tensor]:
    """The CPU's random state, and the accelerator's when ``device`` is one."""
    states = [torch.get_rng_state()]
    module = getattr(torch, device.type, None) if device.type != "cpu" else None
    if module is not None and hasattr(module, "get_rng_state"):
        states.append(module.get_rng_state(device))
    return states


def _set_random_state(device: torch.device, states: Sequence[Tensor]) -> None:
    torch.set_rng_state(states[0])
    if len(states) > 1:
        getattr(torch, device.type).set_rng_state(states[1], device)


def _check_harmful_dataset(dataset: Any) -> None:
    if dataset is None:
        raise ConfigError(
            "`harmful_dataset` is required: harmful prompts with harmful answers, in the format of "
            "`train_dataset`, from which Panacea computes h(w) and ε"
        )
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise ConfigError(
            f"`harmful_dataset` must be a map-style data set (with __len__ and indexing), got "
            f"{type(dataset).__name__}"
        )
    if len(dataset) == 0:
        raise ConfigError("`harmful_dataset` is empty; Panacea needs harmful examples to compute ε")


class PanaceaTrainerMixin(_Base):
    """The Panacea training step for a ``transformers.Trainer`` subclass (Alg. 1 of arXiv:2501.18100).

    Mix it in before the trainer class: ``class MyTrainer(PanaceaTrainerMixin, Trainer)``. It overrides
    ``training_step`` (and ``log``, to add its metrics). Each optimizer step runs, on a harmful batch of
    ``harmful_batch_size × gradient_accumulation_steps`` examples per process:

    1. before the first task micro-batch, pass 1: h0 = ∇h(w) (one forward-backward per harmful micro-batch),
       averaged across processes and kept; the gradient buffers are cleared; ε = ρ·h0/‖h0‖₂ over the
       perturbed parameters;
    2. the parent's ``training_step`` on each task micro-batch: the buffers accumulate the task gradient g;
    3. after the last task micro-batch, pass 2: w ← w + ε; −λ·h1 with h1 = ∇ min(h(w+ε), C) is added to the
       buffers (each harmful micro-batch in ``perturbed_pass_pieces`` pieces of rows); w ← w − ε; the buffers
       are averaged across processes and λ·h0 is added.

    The optimizer then applies g − λ(h1 − h0). The clamp is decided on the whole harmful batch's mean loss at
    w+ε before any of h1 reaches the buffers: when it exceeds C, h1 = 0 and pass 2 has no backward. Three
    forward-backward passes per micro-batch (plus, with the clamp on and pass 2 in more than one piece, a
    no-grad forward of all but its last piece); with λ = 0 pass 2 is skipped.

    Attributes:
        harmful_dataset: the harmful data set as the trainer uses it (columns the model does not take removed;
            tokenized by ``SFTTrainer`` for the TRL variant).
        applied_perturbation: the ε added to the weights when training ended (None before, or with
            ``final_perturbation="none"``).
        perturbed_pass_pieces: the pieces pass 2 takes each harmful micro-batch in (``perturbed_pass_pieces``,
            or what None chose for this model).
    """

    args: PanaceaConfig
    panacea_config_class: ClassVar[type[PanaceaConfig]] = PanaceaConfig
    """The arguments class the trainer requires."""

    def __init__(
        self,
        model: Any = None,
        args: PanaceaConfig | None = None,
        *,
        harmful_dataset: Any = None,
        **kwargs: Any,
    ) -> None:
        expected = self.panacea_config_class
        if not isinstance(args, expected):
            raise TypeError(f"`args` must be a {expected.__name__}, got {type(args).__name__}")
        # Fail before the Trainer sets anything up (it creates output_dir); checked again on what it prepared.
        _check_harmful_dataset(harmful_dataset)
        self._harmful_sampler(args, len(harmful_dataset))
        if isinstance(model, nn.Module):
            select_parameters(model, args.perturb_parameters)
        super().__init__(model=model, args=args, **kwargs)
        select_parameters(self._module, args.perturb_parameters)  # the model as wrapped, e.g. with PEFT
        self.harmful_dataset, self._harmful_collator = self._prepare_harmful_dataset(harmful_dataset)
        self._harmful_batches = self._harmful_sampler(args, len(self.harmful_dataset))
        self.perturbed_pass_pieces = _choose_pieces(args.perturbed_pass_pieces, self._module)
        self._harmful_grad: dict[str, Tensor] = {}  # h0 of the perturbed parameters (ε = c·h0)
        self._epsilon_scale = 0.0  # c = ρ/‖h0‖ over the perturbed parameters
        self._perturbed: list[str] = []
        self._epsilon_sum: dict[str, Tensor] = {}
        self._epsilon_count = 0
        self._harmful_step: int | None = None
        self._micro_batches_left = 0  # task micro-batches of the current step still to come
        self._step: _PanaceaStep | None = None  # what pass 1 leaves for pass 2
        self._panacea_metrics: dict[str, list[float]] = defaultdict(list)
        self.applied_perturbation: dict[str, Tensor] | None = None
        self.add_callback(PanaceaCallback(cast("PanaceaTrainer", self)))

    # ----------------------------------------------------------------------------------------- data
    @staticmethod
    def _harmful_sampler(args: PanaceaConfig, size: int) -> HarmfulBatches:
        return HarmfulBatches(
            size,
            args.harmful_batch_size or args.per_device_train_batch_size,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            rank=args.process_index,
            world_size=args.world_size,
        )

    def _prepare_harmful_dataset(self, dataset: Any) -> tuple[Any, Any]:
        """The harmful data set and its collator, as ``Trainer`` prepares a training set."""
        import datasets

        if isinstance(dataset, datasets.Dataset):
            return self._remove_unused_columns(dataset, description="harmful"), self.data_collator
        return dataset, self._get_collator_with_removed_columns(self.data_collator, description="harmful")

    def _harmful_chunks(self, count: int) -> list[dict[str, Any]]:
        """This optimizer step's harmful micro-batches on this process: one per task micro-batch."""
        accumulation = self.args.gradient_accumulation_steps
        chunks = []
        for k in range(count):
            indices = self._harmful_batches.indices(self.state.global_step * accumulation + k)
            batch = self._harmful_collator([self.harmful_dataset[i] for i in indices])
            chunks.append(self._prepare_inputs(batch))
        return chunks

    def _harmful_units(self, chunks: Sequence[dict[str, Any]], pieces: int, num_items: Any) -> list[_Unit]:
        """The harmful micro-batches cut into ``pieces`` row slices each, with the weights of their losses.

        The units' weighted losses sum to the harmful batch's mean loss: a loss normalised by the whole
        batch's ``num_items_in_batch`` (a model taking loss kwargs, or ``compute_loss_func``) is summed as it
        is; otherwise each unit's mean loss is weighted by its share of the rows (exact for a loss that is a
        mean over rows; for a mean over tokens, with one piece per micro-batch only).
        """
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items is not None
            ) or self.compute_loss_func is not None
        units = []
        for chunk in chunks:
            for inputs, share in _row_pieces(chunk, pieces):
                units.append(_Unit(inputs, 1.0 if scaled else share / len(chunks)))
        return units

    def _harmful_context(self) -> contextlib.AbstractContextManager[Any]:
        """A context around the harmful passes (the TRL variant enters its activation offloading here)."""
        return contextlib.nullcontext()

    def _harmful_loss(self, model: nn.Module, inputs: dict[str, Any], num_items: Any) -> Tensor:
        """H on one harmful micro-batch, computed as the task loss is (``compute_loss``)."""
        return cast(Tensor, self.compute_loss(model, dict(inputs), num_items_in_batch=num_items))

    # ----------------------------------------------------------------------------------------- step
    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor:
        """Pass 1 before the step's first task micro-batch, the parent's step, pass 2 after the last one.

        Returns the task loss (what ``Trainer`` logs as ``loss``); the harmful losses and ‖ε‖ are logged as
        ``harmful_loss``, ``harmful_loss_perturbed``, ``perturbation_norm``, ``harmful_grad_norm`` and
        ``harmful_loss_clamped`` (the fraction of steps whose h(w+ε) exceeded the clamp).
        """
        if self._micro_batches_left == 0 or self._harmful_step != self.state.global_step:
            self._harmful_step = self.state.global_step
            self._set_train_mode(model)
            with self._harmful_context():
                self._harmful_pass(model)
        self._micro_batches_left -= 1
        step = self._step
        if step is None:  # λ = 0: no pass 2, the parent's step synchronises the gradient as usual
            return super().training_step(model, inputs, num_items_in_batch)
        # The gradient is averaged across processes once, after pass 2 has added to it.
        with self.accelerator.no_sync(model):
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self._micro_batches_left == 0:
            self._set_train_mode(model)
            with self._harmful_context():
                self._perturbed_pass(model, step)
        return loss

    @property
    def _module(self) -> nn.Module:
        """The model the Trainer trains (as wrapped, e.g. with PEFT; the Trainer always holds one)."""
        if self.model is None:
            raise RuntimeError("the trainer holds no model")
        return self.model

    def _set_train_mode(self, model: nn.Module) -> None:
        model.train()
        train = getattr(self.optimizer, "train", None)  # schedule-free optimizers switch modes
        if callable(train):
            train()

    def _harmful_pass(self, model: nn.Module) -> None:
        """Pass 1: h0 = ∇h(w), averaged across processes; ε's scale; what pass 2 needs, in ``self._step``."""
        args = self.args
        trainable = [(name, p) for name, p in self._module.named_parameters() if p.requires_grad]
        perturbed = list(select_parameters(self._module, args.perturb_parameters))
        count = getattr(self, "current_gradient_accumulation_steps", args.gradient_accumulation_steps)
        chunks = self._harmful_chunks(count)
        count_items = getattr(self, "_get_num_items_in_batch", None)
        num_items = count_items(chunks, args.device) if count_items is not None else None
        # The last step's h0 (its ε) is dropped first, so that pass 1 does not run beside it.
        self._harmful_grad, self._perturbed, self._step = {}, [], None
        with self.accelerator.no_sync(model):
            for _, param in trainable:
                param.grad = None
            units = self._harmful_units(chunks, 1, num_items)
            loss = self._harmful_backward(model, units, num_items, weight=1.0)
        h0 = self._keep_harmful_gradient(trainable)
        grad_norm = global_norm(h0[name] for name in perturbed)
        self._harmful_grad = {name: h0[name] for name in perturbed}
        self._epsilon_scale = epsilon_scale(grad_norm, args.panacea_rho)
        self._perturbed = perturbed
        # h0 of every trainable parameter waits for pass 2 (λ·h0); with λ = 0 it is dropped here.
        self._micro_batches_left = count
        step = _PanaceaStep(
            chunks=chunks,
            num_items=num_items,
            loss=self._mean_across_processes(loss),
            grad_norm=grad_norm,
            h0=h0 if args.panacea_lambda > 0 else {},
        )
        if args.panacea_lambda > 0:
            self._step = step
        else:
            self._record_step(step, None, clamped=False)

    def _perturbed_pass(self, model: nn.Module, step: _PanaceaStep) -> None:
        """Pass 2, after the last task micro-batch: the buffers hold g; they end holding g − λ(h1 − h0)."""
        args = self.args
        lam, h0 = args.panacea_lambda, step.h0
        trainable = [(name, p) for name, p in self._module.named_parameters() if p.requires_grad]
        selected = set(self._perturbed)
        params: list[Tensor] = [p for name, p in trainable if name in selected]
        directions = [h0[name] for name, _ in trainable if name in selected]
        units = self._harmful_units(step.chunks, self.perturbed_pass_pieces, step.num_items)
        with self.accelerator.no_sync(model):
            with torch.no_grad():
                torch._foreach_add_(params, directions, alpha=self._epsilon_scale)  # w + ε
            try:
                loss, clamped = self._perturbed_backward(model, units, step.num_items, lam)
            finally:
                with torch.no_grad():
                    torch._foreach_add_(params, directions, alpha=-self._epsilon_scale)  # back to w
        with torch.no_grad():
            if self._distributed:
                grads = []
                for _, param in trainable:
                    if param.grad is None:
                        param.grad = torch.zeros_like(param)
                    grads.append(param.grad)
                self._average_across_processes(grads)
            for name, param in trainable:
                if param.grad is None:  # reached by neither g nor h1 (or h1 = 0: above the clamp)
                    param.grad = h0[name] * lam
                else:
                    param.grad.add_(h0[name], alpha=lam)
        self._step = None  # frees h0 of the parameters ε leaves alone, and the harmful batches
        self._record_step(step, loss, clamped)

    def _perturbed_backward(
        self, model: nn.Module, units: Sequence[_Unit], num_items: Any, lam: float
    ) -> tuple[float, bool]:
        """Add −λ·∇ min(h(w+ε), C) to the buffers; returns h(w+ε) (mean across processes) and the verdict.

        The clamp is decided on the whole batch's loss before any backward: with one unit its forward gives
        it; with several, the units but the last are first run without gradients (their random state kept,
        so that the forward repeated with gradients draws the same dropout), then the last unit's forward is
        kept for its backward.
        """
        clamp = self.args.harmful_loss_clamp
        if clamp is None:
            total = self._harmful_backward(model, units, num_items, weight=-lam)
            return self._mean_across_processes(total), False
        device = self.args.device
        states: list[list[Tensor]] = []
        total = torch.zeros((), device=device)
        with torch.no_grad():
            for unit in units[:-1]:
                states.append(_random_state(device))
                total += self._unit_loss(model, unit, num_items).float()
        last = self._unit_loss(model, units[-1], num_items)
        after = _random_state(device)
        total += last.detach().float()
        value = self._mean_across_processes(total)
        if value > clamp:  # min(h, C) is flat above C: h1 = 0
            return value, True
        self.accelerator.backward(last * -lam)
        del last
        for unit, state in zip(units[:-1], states, strict=True):
            _set_random_state(device, state)
            self.accelerator.backward(self._unit_loss(model, unit, num_items) * -lam)
        _set_random_state(device, after)
        return value, False

    def _unit_loss(self, model: nn.Module, unit: _Unit, num_items: Any) -> Tensor:
        """The weighted harmful loss of one unit (its share of the batch's mean loss)."""
        with self.compute_loss_context_manager():
            loss = self._harmful_loss(model, unit.inputs, num_items)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        return loss * unit.weight if unit.weight != 1.0 else loss

    def _harmful_backward(
        self, model: nn.Module, units: Sequence[_Unit], num_items: Any, *, weight: float
    ) -> Tensor:
        """Backpropagate ``weight · h`` over the units; returns h (the batch's mean, on this process)."""
        total = torch.zeros((), device=self.args.device)
        for unit in units:
            loss = self._unit_loss(model, unit, num_items)
            self.accelerator.backward(loss * weight)
            total += loss.detach().float()
        return total

    @property
    def _distributed(self) -> bool:
        return (
            self.accelerator.num_processes > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        )

    def _average_across_processes(self, tensors: Iterable[Tensor]) -> None:
        """Replace each tensor by its mean across processes, in place (nothing in one process)."""
        if not self._distributed:
            return
        world = self.accelerator.num_processes
        for tensor in tensors:
            torch.distributed.all_reduce(tensor)
            tensor.div_(world)

    def _mean_across_processes(self, value: Tensor) -> float:
        return float(self.accelerator.reduce(value.reshape(1), reduction="mean")[0])

    @torch.no_grad()
    def _keep_harmful_gradient(self, trainable: Sequence[tuple[str, nn.Parameter]]) -> dict[str, Tensor]:
        """Copy the gradient buffers (h0), average the copies across processes, clear the buffers."""
        kept: dict[str, Tensor] = {}
        for name, param in trainable:
            if param.grad is None:  # a parameter the harmful loss does not reach
                kept[name] = torch.zeros_like(param)
            else:
                kept[name] = param.grad.clone()
            param.grad = None
        self._average_across_processes(kept.values())
        return kept

    def _record_step(self, step: _PanaceaStep, perturbed_loss: float | None, clamped: bool) -> None:
        metrics = self._panacea_metrics
        metrics["harmful_loss"].append(step.loss)
        if perturbed_loss is not None:
            metrics["harmful_loss_perturbed"].append(perturbed_loss)
            metrics["harmful_loss_clamped"].append(float(clamped))
        metrics["harmful_grad_norm"].append(step.grad_norm)
        metrics["perturbation_norm"].append(self._epsilon_scale * step.grad_norm)
        if self.args.final_perturbation == "mean":
            with torch.no_grad():
                for name in self._perturbed:
                    eps = self._harmful_grad[name] * self._epsilon_scale
                    if name in self._epsilon_sum:
                        self._epsilon_sum[name].add_(eps)
                    else:
                        self._epsilon_sum[name] = eps
            self._epsilon_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean Panacea metrics since the last training log, then log as the parent does."""
        if "loss" in logs and self._panacea_metrics:
            logs.update({key: sum(values) / len(values) for key, values in self._panacea_metrics.items()})
            self._panacea_metrics.clear()
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------- ε
    @property
    def perturbation(self) -> dict[str, Tensor] | None:
        """The current ε (the last step's ρ·h0/‖h0‖) by parameter name, new tensors; None before training."""
        if not self._perturbed:
            return None
        return {name: self._harmful_grad[name] * self._epsilon_scale for name in self._perturbed}

    def final_perturbation(self) -> dict[str, Tensor] | None:
        """The ε that ``final_perturbation`` selects: the last step's, the mean of all steps', or None."""
        rule = self.args.final_perturbation
        if rule == "none":
            return None
        if rule == "mean":
            if not self._epsilon_count:
                return None
            return {name: total / self._epsilon_count for name, total in self._epsilon_sum.items()}
        return self.perturbation

    def panacea_state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the last ε and the running sum for ``final_perturbation="mean"``."""
        epsilon = self.perturbation or {}
        return {
            "epsilon": {name: t.detach().cpu() for name, t in epsilon.items()},
            "epsilon_sum": {name: t.detach().cpu() for name, t in self._epsilon_sum.items()},
            "epsilon_count": self._epsilon_count,
        }

    def load_panacea_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`panacea_state` (on every process, when training resumes)."""
        params = dict(self._module.named_parameters())
        epsilon = cast(dict[str, Tensor], state["epsilon"])
        self._harmful_grad = {
            name: t.to(params[name].device, params[name].dtype) for name, t in epsilon.items()
        }
        self._epsilon_scale = 1.0
        self._perturbed = list(epsilon)
        self._epsilon_sum = {
            name: t.to(params[name].device, params[name].dtype) for name, t in state["epsilon_sum"].items()
        }
        self._epsilon_count = int(state["epsilon_count"])


class PanaceaCallback(StatefulCallback):
    """Keeps a :class:`PanaceaTrainerMixin`'s ε in every checkpoint and adds the final ε when training ends.

    The trainer registers it itself. Its state lives in ``<checkpoint>/paperpack_callbacks/panacea.*``.
    """

    state_name = "panacea"

    def __init__(self, trainer: PanaceaTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """The trainer's :meth:`~PanaceaTrainerMixin.panacea_state`."""
        return self.trainer.panacea_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the trainer's state."""
        self.trainer.load_panacea_state(state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Add the final ε to the weights (w_T + ε_T in the paper), on every process."""
        trainer = self.trainer
        if args.load_best_model_at_end and state.best_model_checkpoint:
            # The weights are the best checkpoint's: take the ε kept with them.
            folder = Path(state.best_model_checkpoint) / STATE_FOLDER
            trainer.load_panacea_state(read_callback_state(folder, self.state_name))
        final = trainer.final_perturbation()
        if final is None:
            if trainer.args.final_perturbation != "none":
                logger.warning("no Panacea step ran, so no perturbation was added to the weights")
            return
        apply_perturbation(cast(nn.Module, trainer.model), final)
        trainer.applied_perturbation = final
        logger.info(
            "added the final Panacea perturbation (‖ε‖ = %.4g) to the weights", global_norm(final.values())
        )


class PanaceaTrainer(PanaceaTrainerMixin, Trainer):
    """Fine-tuning with Panacea's max-max objective on the Hugging Face ``Trainer`` (arXiv:2501.18100).

    The user's fine-tuning data (``train_dataset``, which may hold harmful samples) gives the task loss g; a
    separate ``harmful_dataset`` (harmful prompts with harmful answers, in the same format) gives h. Each
    optimizer step computes ε = ρ·∇h(w)/‖∇h(w)‖₂ and descends along g − λ(∇h(w+ε) − ∇h(w)), so the weights
    learn to let ε raise the harmful loss; when training ends the final ε is added to the weights
    (``final_perturbation``), and :attr:`perturbation` keeps it for
    :func:`~paperpack.panacea.save_perturbation`.

    Everything else is the ``Trainer``'s: the optimizer and its schedule, gradient clipping (of the combined
    gradient), gradient accumulation (the harmful batch grows with it, so accumulating k micro-batches equals
    one step on the k-times larger batch), evaluation (of the unperturbed weights), checkpoints (each keeps
    the last ε; resuming reproduces the uninterrupted run's weights) and accelerate DDP (h0 is averaged across
    processes before ε is formed, so every rank adds the same ε; the gradient is averaged once, after pass 2).
    Pass 2 (at w + ε) runs after the task micro-batches, in ``perturbed_pass_pieces`` pieces, so that full
    fine-tuning peaks at about one more copy of the trainable weights than SFT, not two. A PEFT model perturbs
    its adapter weights (the parameters with ``requires_grad``). The harmful batches are a function of the
    seed and the step, not of a data loader's position, so they survive a resume.

    Args:
        model: the model (a ``PreTrainedModel``, a PEFT model, or any module returning a loss).
        args: a :class:`~paperpack.panacea.PanaceaConfig`.
        harmful_dataset: harmful examples in the format of ``train_dataset`` (``data_collator`` batches both).
        **kwargs: any other ``Trainer`` argument.

    Raises:
        TypeError: when ``args`` is not a ``PanaceaConfig``.
        ConfigError: for a missing, empty or too small ``harmful_dataset``, or ``perturb_parameters`` that
            match no trainable parameter.

    Examples:
        >>> import tempfile
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.panacea import PanaceaConfig, PanaceaTrainer
        >>> model, tokenizer = tiny_causal_lm()
        >>> task = [{"input_ids": ids, "labels": ids} for ids in tokenizer(["2 + 3 = 5"] * 4)["input_ids"]]
        >>> def rows(texts):
        ...     return [{"input_ids": ids, "labels": ids} for ids in tokenizer(texts)["input_ids"]]
        >>> harmful = rows(["do harm: sure"] * 4)
        >>> args = PanaceaConfig(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=2,
        ...                      report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
        >>> trainer = PanaceaTrainer(model=model, args=args, train_dataset=task, harmful_dataset=harmful)
        >>> trainer.train().global_step  # the Trainer prints its summary  # doctest: +ELLIPSIS
        {'train_runtime': ...}
        2
        >>> round(sum(t.norm() ** 2 for t in trainer.perturbation.values()).sqrt().item(), 4)
        1.0
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: PanaceaConfig | None = None,
        *,
        harmful_dataset: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, args=args, harmful_dataset=harmful_dataset, **kwargs)
