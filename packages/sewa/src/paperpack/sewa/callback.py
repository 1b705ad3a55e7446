"""SeWACallback: snapshot the final stage of a Trainer run, select k snapshots with SeWA, load their mean.

The callback plugs SeWA into ``transformers.Trainer`` (and every TRL trainer built on it):

1. ``on_step_end``: in the last ``window × snapshot_every`` steps, every ``snapshot_every`` steps (ending
   at the last step), it copies the model's *trainable* parameters (a PEFT model: the adapters only) and its
   persistent buffers (batch norm's running statistics) to CPU memory or, with ``offload_dir``, to a
   safetensors file.
2. ``on_save`` / ``on_train_begin`` (from ``StatefulCallback``): the window and the
   mask travel with every checkpoint and come back on resume.
3. ``on_train_end``: it fits the mask on batches of the training data (the paper's F) or of the eval data,
   with the model in eval mode, and copies the mean of the selected snapshots into the model: the weights and
   the floating-point buffers are averaged alike (integer buffers such as batch norm's batch counter come from
   the latest selected snapshot). With ``update_bn=True`` the batch-norm statistics are then re-estimated on
   one pass over the training data, as ``torch.optim.swa_utils.update_bn`` does.

Under ``accelerate launch`` (DDP) every rank takes the same snapshots, evaluates the loss on its own shard of
the selection data, and the mask gradient is averaged across ranks before each step, so every rank follows the
same s, selects the same snapshots and ends with the same weights. FSDP and DeepSpeed ZeRO-3 (sharded
parameters) are not supported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainerControl, TrainerState, TrainingArguments

from paperpack.core.checkpoints import PathLike
from paperpack.core.distributed import all_reduce_mean, barrier
from paperpack.core.errors import ConfigError
from paperpack.core.hf import StatefulCallback
from paperpack.core.validation import check_int
from paperpack.sewa.batch_norm import batch_norm_layers, update_batch_norm
from paperpack.sewa.config import SeWAConfig
from paperpack.sewa.loss import model_loss, selection_batches
from paperpack.sewa.selection import SeWAResult, select_snapshots
from paperpack.sewa.store import SnapshotStore

__all__ = ["SeWACallback", "load_into", "snapshot_state"]

logger = logging.getLogger(__name__)


class SeWACallback(StatefulCallback):
    """Select and average the best k of the last ``window`` snapshots of a Trainer run (SeWA).

    Args:
        config: SeWA's hyperparameters (``SeWAConfig()`` when ``None``); ``config.k`` snapshots are kept.
        window: K, the number of snapshots considered (the paper's window of final-stage checkpoints).
        snapshot_every: Steps between snapshots; the window covers the last ``window × snapshot_every`` steps.
        offload_dir: Write snapshots there as safetensors files instead of keeping them in CPU memory.
        selection_dataloader: Batches to fit the mask on, overriding ``config.selection_data`` (the Trainer's
            train or eval data). Any iterable of model-input dicts with labels.
        update_bn: After loading the mean of the selected snapshots, re-estimate the running statistics of
            every batch-norm layer on one pass over the training data (``update_batch_norm``). Off: they are
            the mean of the selected snapshots' statistics. Models without batch norm are unaffected.

    Attributes:
        result: The ``SeWAResult`` of the selection, after training (in this process).
        indices: Positions of the selected snapshots in the window (also restored from a checkpoint).
        probabilities: The final keep-probabilities s (also restored from a checkpoint).

    Examples:
        >>> from paperpack.sewa import SeWACallback, SeWAConfig
        >>> callback = SeWACallback(SeWAConfig(k=3), window=10, snapshot_every=20)
        >>> callback.window, callback.snapshot_every
        (10, 20)

        Then ``Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()``.
    """

    state_name = "sewa"

    def __init__(
        self,
        config: SeWAConfig | None = None,
        *,
        window: int = 20,
        snapshot_every: int = 1,
        offload_dir: PathLike | None = None,
        selection_dataloader: Iterable[Mapping[str, Any]] | None = None,
        update_bn: bool = False,
    ) -> None:
        self.config = SeWAConfig() if config is None else config
        if not isinstance(self.config, SeWAConfig):
            raise TypeError(f"`config` must be a SeWAConfig, got {type(self.config).__name__}")
        check_int("window", window, minimum=1)
        check_int("snapshot_every", snapshot_every, minimum=1)
        if window < self.config.k:
            raise ConfigError(f"`window` must be >= k={self.config.k} (the snapshots kept), got {window}")
        if offload_dir is not None and not isinstance(offload_dir, str | Path):
            raise TypeError(f"`offload_dir` must be a path, got {type(offload_dir).__name__}")
        if not isinstance(update_bn, bool):
            raise ConfigError(f"`update_bn` must be a bool, got {update_bn!r}")
        self.window = window
        self.snapshot_every = snapshot_every
        self.offload_dir = Path(offload_dir) if offload_dir is not None else None
        self.selection_dataloader = selection_dataloader
        self.update_bn = update_bn
        self.store = SnapshotStore(window, self.offload_dir)
        self.result: SeWAResult | None = None
        self.indices: list[int] | None = None
        self.probabilities: Tensor | None = None

    # ---- checkpointed state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The snapshot window and, once selected, the mask."""
        return {
            "window": self.store.state_dict(),
            "indices": self.indices,
            "probabilities": self.probabilities,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the snapshot window and the mask saved by ``state_dict``."""
        self.store.load_state_dict(state["window"])
        self.indices = state["indices"]
        self.probabilities = state["probabilities"]

    # ---- Trainer events ----------------------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Check that the run can fill a window of k snapshots, then restore a resumed run's state."""
        self.store.writer = bool(args.should_save)
        fitting = (
            min(self.window, (state.max_steps - 1) // self.snapshot_every + 1) if state.max_steps > 0 else 0
        )
        if fitting < self.config.k:
            raise ConfigError(
                f"training runs {state.max_steps} steps, so only {fitting} snapshots fit with "
                f"snapshot_every={self.snapshot_every}, fewer than k={self.config.k}: "
                "lower `snapshot_every` or `k`"
            )
        if (
            self.config.selection_data == "eval"
            and self.selection_dataloader is None
            and str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no"
        ):
            raise ConfigError(
                "SeWA fits its mask on selection_data='eval', but the Trainer never evaluates "
                "(eval_strategy='no'), so it will have no eval dataloader: set `eval_strategy` and "
                "`eval_dataset`, or pass `selection_dataloader=` to SeWACallback"
            )
        model = kwargs.get("model")
        # ZeRO-3 marks its partitioned parameters with `ds_id`; FSDP is named in the arguments.
        sharded = bool(getattr(args, "fsdp", None)) or (
            model is not None and any(hasattr(p, "ds_id") for p in model.parameters())
        )
        if sharded:
            raise ConfigError(
                "SeWACallback needs every rank to hold the full parameters: FSDP and DeepSpeed ZeRO-3 are "
                "not supported (use DDP, or ZeRO stages 1-2)"
            )
        if model is not None and not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("the model has no trainable parameters, so SeWA has nothing to snapshot")
        super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Snapshot the trainable parameters when this step falls in the final window."""
        remaining = state.max_steps - state.global_step
        if remaining < 0 or remaining % self.snapshot_every or remaining >= self.window * self.snapshot_every:
            return
        self.store.add(state.global_step, snapshot_state(kwargs["model"]))
        logger.debug("SeWA snapshot at step %d (%d in the window)", state.global_step, len(self.store))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Fit the mask, then load the mean of the selected snapshots into the model."""
        if len(self.store) < self.config.k:
            logger.warning(
                "SeWA skipped: training ended at step %d with %d snapshots, fewer than k=%d",
                state.global_step,
                len(self.store),
                self.config.k,
            )
            return
        model: nn.Module = kwargs["model"]
        device = next(model.parameters()).device
        world = max(int(args.world_size), 1)
        batches = selection_batches(
            self._selection_source(args, kwargs),
            self._batch_size(args),
            seed=self.config.seed,
            rank=int(args.process_index),
            world_size=world,
        )
        barrier()  # the main process may still be writing the last offloaded snapshot
        snapshots = self.store.load()
        was_training = model.training
        model.eval()
        try:
            result = select_snapshots(
                snapshots,
                model_loss(model, batches, device),
                self.config,
                device=device,
                reduce_gradient=(lambda gradient: all_reduce_mean(gradient, device=device))
                if world > 1
                else None,
                progress=state.is_world_process_zero and not args.disable_tqdm,
            )
        finally:
            model.train(was_training)
        load_into(model, result.state_dict)
        if self.update_bn and batch_norm_layers(model):
            self._update_batch_norm(model, args, kwargs, device, world)
        if world > 1:
            # The ranks' buffers differ: with update_bn each rank saw its own shard, so their mean is the mean
            # over all batches; without, each rank's snapshots drifted from rank 0's between forward passes
            # (DDP broadcasts them at the next one). Either way every rank ends with the same mean.
            buffers = dict(model.named_buffers())
            with torch.no_grad():
                for key in result.state_dict:
                    if key in buffers and buffers[key].is_floating_point():
                        buffers[key].copy_(all_reduce_mean(buffers[key], device=device))
        self.result = result
        self.indices = result.indices
        self.probabilities = result.probabilities
        logger.info(
            "SeWA selected the snapshots of steps %s and loaded their mean",
            [self.store.steps[i] for i in result.indices],
        )

    # ---- helpers -----------------------------------------------------------------------------------------

    def _selection_source(
        self, args: TrainingArguments, kwargs: Mapping[str, Any]
    ) -> Iterable[Mapping[str, Any]]:
        if self.selection_dataloader is not None:
            return self.selection_dataloader
        name = "train_dataloader" if self.config.selection_data == "train" else "eval_dataloader"
        source = kwargs.get(name)
        if source is None:
            raise ConfigError(
                f"SeWA fits its mask on selection_data={self.config.selection_data!r}, but the Trainer has "
                f"no {name} at the end of training (the eval dataloader exists only after an evaluation): "
                "pass `selection_dataloader=` to SeWACallback or evaluate during training"
            )
        return source  # type: ignore[no-any-return]

    def _update_batch_norm(
        self,
        model: nn.Module,
        args: TrainingArguments,
        kwargs: Mapping[str, Any],
        device: torch.device,
        world: int,
    ) -> None:
        source = kwargs.get("train_dataloader")
        if source is None:
            raise ConfigError("`update_bn=True` needs the Trainer's train dataloader at the end of training")
        batches = selection_batches(
            source,
            int(args.per_device_train_batch_size),
            seed=self.config.seed,
            rank=int(args.process_index),
            world_size=world,
            passes=1,
        )
        count = update_batch_norm(model, batches, device=device)
        logger.info("SeWA re-estimated the batch-norm statistics on %d batches", count)

    def _batch_size(self, args: TrainingArguments) -> int:
        if self.config.selection_data == "train":
            return int(args.per_device_train_batch_size)
        return int(args.per_device_eval_batch_size)


def snapshot_state(model: nn.Module) -> dict[str, Tensor]:
    """What a SeWA snapshot holds: the trainable parameters and the persistent buffers of ``model`` by name.

    Buffers are batch norm's running statistics and counters (those a state dict saves); frozen parameters
    are left out, so a PEFT model's snapshot holds its adapters (and the buffers, if any). The tensors are
    detached views; the store copies them.
    """
    state = {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    for name, value in model.state_dict(keep_vars=True).items():
        if name not in parameters:
            state[name] = value.detach()
    return state


def load_into(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into the parameters and buffers of ``model`` with the same names."""
    targets = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value.to(targets[name].device))
