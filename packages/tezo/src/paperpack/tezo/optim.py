"""``ZOOptimizer``: MeZO, TeZO and LOZO as a ``torch.optim.Optimizer`` driven by a loss closure."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor

from paperpack.core.distributed import all_reduce_mean, check_same_across_ranks, is_distributed
from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.core.validation import check_bool, check_choice, check_int, check_number
from paperpack.tezo.choices import (
    ESTIMATES,
    METHODS,
    ONE_DIM_MODES,
    Estimate,
    Method,
    OneDimMode,
    method_parts,
)
from paperpack.tezo.directions import (
    DenseDirection,
    Direction,
    LazyLowRankDirection,
    TemporalLowRankDirection,
    UpdateHyperparams,
)
from paperpack.tezo.perturbation import Patch, perturb_, restore_

__all__ = ["ZOOptimizer", "decays", "unwrap_optimizer", "zo_state_bytes"]

logger = logging.getLogger(__name__)

# Settings that shape the random stream and the state: one value for the whole optimizer.
_GLOBAL_KEYS = (
    "method",
    "eps",
    "rank",
    "seed",
    "cache_factors",
    "scale_by_rank",
    "estimate",
    "one_dim",
    "lozo_interval",
)
_GROUP_KEYS = ("lr", "weight_decay", "betas", "adam_eps")

Closure = Callable[[], Tensor | float]


def decays(param: Tensor) -> bool:
    """Whether weight decay applies to ``param``: it has two or more dimensions.

    The one rule of :class:`ZOOptimizer` and of :class:`~paperpack.tezo.ZOTrainer`: weight matrices,
    embeddings and convolution kernels are decayed; 1-D parameters (biases, norm weights) never are, whatever
    their group's ``weight_decay``. On the usual transformer models this is the set that transformers'
    ``Trainer`` decays by its name rule, and MeZO's.
    """
    return param.ndim >= 2


class ZOOptimizer(torch.optim.Optimizer):
    """Zeroth-order optimizer: the gradient is estimated from two loss evaluations, never by backward.

    Each step draws a direction Z_t per parameter (MeZO: dense Gaussian; TeZO: U diag(τ_t) Vᵀ with U, V fixed;
    LOZO: U_t Vᵀ with V lazy), evaluates the loss at θ + ρZ_t and θ − ρZ_t, restores θ, forms the projected
    gradient κ = (ℓ⁺ − ℓ⁻)/(2ρ) and applies the method's SGD, momentum or Adam rule to g_t = κ·Z_t. Random
    draws are regenerated from seeds, so the only per-step randomness kept is the step counter.

    ``step(closure)`` does all of it. For gradient accumulation call :meth:`estimate` once per micro-batch
    (the κ add up, as gradients do under ``backward``: scale each micro-batch loss by 1/k) and then
    ``step()`` without a closure. Under ``torch.distributed`` every rank must use the same seed (checked
    against rank 0 at the first step) and the κ are averaged across ranks before the update, so replicas draw
    the same directions and stay identical.

    Args:
        params: the parameters to train, or parameter groups (dicts with ``params`` and optionally ``lr``,
            ``weight_decay``, ``betas``, ``adam_eps``).
        method: one of ``mezo_sgd``, ``mezo_momentum``, ``mezo_adam``, ``tezo_sgd``, ``tezo_momentum``,
            ``tezo_adam``, ``lozo``.
        lr: learning rate η.
        eps: perturbation scale ρ (MeZO's ``zo_eps``).
        rank: r, the rank of TeZO's and LOZO's directions (ignored by MeZO).
        betas: (β1, β2) of the momentum and Adam rules.
        seed: seed of every random draw of the run.
        adam_eps: ε of the Adam rules.
        weight_decay: decoupled weight decay λ (W ← W − η·λ·W), applied to the parameters of a group that
            have two or more dimensions, never to 1-D ones (biases, norm weights): see :func:`decays`.
        cache_factors: keep TeZO's U, V (LOZO's V) in memory, or regenerate them from seeds at each use.
        scale_by_rank: draw TeZO's τ_t from N(0, I/r) (LOZO: divide Z_t by √r), which makes the estimate
            unbiased; off by default, as in the peers' code.
        estimate: ``"two_sided"`` (MeZO) or ``"one_sided"`` (ZO-Bench's forward difference).
        one_dim: ``"dense"`` (1-D parameters get a dense Gaussian direction and the method's rule, or SGD for
            LOZO) or ``"freeze"`` (1-D parameters are not trained).
        lozo_interval: ν, LOZO's lazy-sampling interval for V.

    Raises:
        ConfigError: for a bad value, naming it.

    Examples:
        >>> import torch
        >>> from paperpack.tezo import ZOOptimizer
        >>> model = torch.nn.Linear(8, 1)
        >>> x, y = torch.randn(32, 8), torch.randn(32, 1)
        >>> opt = ZOOptimizer(model.parameters(), method="tezo_adam", lr=1e-2, rank=2, seed=0)
        >>> loss = opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        >>> loss.ndim
        0
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        method: Method = "tezo_adam",
        lr: float = 1e-5,
        *,
        eps: float = 1e-3,
        rank: int = 8,
        betas: tuple[float, float] = (0.9, 0.999),
        seed: int = 0,
        adam_eps: float = 1e-8,
        weight_decay: float = 0.0,
        cache_factors: bool = True,
        scale_by_rank: bool = False,
        estimate: Estimate = "two_sided",
        one_dim: OneDimMode = "dense",
        lozo_interval: int = 100,
    ) -> None:
        check_choice("method", method, METHODS)
        check_number("eps", eps, greater_than=0)
        check_int("rank", rank, minimum=1)
        check_int("seed", seed, minimum=0, maximum=2**63 - 1)
        check_choice("estimate", estimate, ESTIMATES)
        check_choice("one_dim", one_dim, ONE_DIM_MODES)
        check_int("lozo_interval", lozo_interval, minimum=1)
        check_bool("cache_factors", cache_factors)
        check_bool("scale_by_rank", scale_by_rank)
        _check_group_values(lr, weight_decay, betas, adam_eps)
        defaults: dict[str, Any] = {
            "lr": lr,
            "weight_decay": weight_decay,
            "betas": tuple(betas),
            "adam_eps": adam_eps,
            "method": method,
            "eps": eps,
            "rank": rank,
            "seed": seed,
            "cache_factors": cache_factors,
            "scale_by_rank": scale_by_rank,
            "estimate": estimate,
            "one_dim": one_dim,
            "lozo_interval": lozo_interval,
        }
        param_list: list[Any] = list(params)
        if not param_list:
            raise ConfigError("`params` must contain at least one parameter, got an empty iterable")
        super().__init__(param_list, defaults)
        self.zo_step = 0
        """t: the number of steps taken; step t's seeds derive from (seed, t)."""
        self.zo_updates = 0
        """k: the number of updates applied (steps whose κ was finite)."""
        self.zo_skipped = 0
        """Steps skipped because κ was not finite (fp16 overflow and the like)."""
        self.last_kappa: float | None = None
        """κ of the last step as applied (the sum over micro-batches, averaged across ranks)."""
        self._pending_kappa = 0.0
        self._pending_count = 0
        self._seed_synced = False
        self._directions: dict[Tensor, Direction] = {}
        self._patches: dict[Tensor, list[Patch]] = {}
        self._sign = 0
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                direction = self._make_direction(param, index)
                index += 1
                if direction is not None:
                    self._directions[param] = direction
                    self.state[param] = direction.init_state(param.detach())
        if not self._directions:
            raise ConfigError(
                f"`params` holds no parameter that {method!r} can train with one_dim={one_dim!r} "
                "(every parameter is 1-D and frozen)"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; it may set only ``lr``, ``weight_decay``, ``betas`` and ``adam_eps`` of its own.

        Raises:
            ConfigError: when the group sets a value that must be the same for the whole optimizer, or a bad
                value, or when called after construction (directions are fixed once stepping may start).
        """
        if getattr(self, "_directions", None) is not None:
            raise ConfigError(
                "`add_param_group` is not supported after construction: create a new ZOOptimizer"
            )
        for key in _GLOBAL_KEYS:
            if key in param_group and param_group[key] != self.defaults[key]:
                raise ConfigError(
                    f"`{key}` must be the same for every parameter group, got {param_group[key]!r} in a "
                    f"group and {self.defaults[key]!r} for the optimizer"
                )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group_values(group["lr"], group["weight_decay"], group["betas"], group["adam_eps"])
        for param in group["params"]:
            if not param.is_contiguous():
                raise ConfigError(
                    f"`params` must be contiguous tensors, got one of shape {tuple(param.shape)} that is not"
                )

    def _make_direction(self, param: Tensor, index: int) -> Direction | None:
        d = self.defaults
        family, rule = method_parts(d["method"])
        shape = tuple(param.shape)
        if param.ndim < 2:
            if d["one_dim"] == "freeze":
                return None
            return DenseDirection(shape, index=index, seed=d["seed"], rule=rule)
        if family == "tezo":
            return TemporalLowRankDirection(
                shape,
                index=index,
                seed=d["seed"],
                rule=rule,
                rank=d["rank"],
                cache_factors=d["cache_factors"],
                scale_by_rank=d["scale_by_rank"],
            )
        if family == "lozo":
            return LazyLowRankDirection(
                shape,
                index=index,
                seed=d["seed"],
                rank=d["rank"],
                interval=d["lozo_interval"],
                cache_factors=d["cache_factors"],
                scale_by_rank=d["scale_by_rank"],
            )
        return DenseDirection(shape, index=index, seed=d["seed"], rule=rule)

    @property
    def method(self) -> str:
        """The zeroth-order method."""
        return cast(str, self.defaults["method"])

    def direction(self, param: Tensor) -> Direction:
        """The direction object of a trained parameter (its factors, rank and seeds).

        Raises:
            KeyError: when ``param`` is not trained by this optimizer.
        """
        return self._directions[param]

    def _move_to_(self, sign: int) -> None:
        """Move θ from its current point to θ + sign·ρZ_t (sign 0: back to θ, bit for bit).

        Undoing the current perturbation and applying the next one share one pass over the blocks of ρZ_t
        (:mod:`paperpack.tezo.perturbation` makes the undo exact).
        """
        undo, self._sign = self._sign, sign
        if not (undo or sign):
            return
        rho = float(self.defaults["eps"])
        for param, direction in self._directions.items():
            flat = param.data.view(-1)
            undo_patches = self._patches.pop(param, [])
            patches: list[Patch] = []
            blocks = direction.deltas(param.data, self.state[param], self.zo_step, rho)
            for number, (start, stop, delta) in enumerate(blocks):
                block = flat[start:stop]
                if undo:
                    restore_(block, delta, undo, undo_patches[number])
                if sign:
                    patches.append(perturb_(block, delta, sign))
            if sign:
                self._patches[param] = patches

    @torch.no_grad()
    def estimate(self, closure: Closure) -> Tensor:
        """Evaluate the loss around θ with this step's direction and add κ to the pending projected gradient.

        θ is perturbed in place and restored bit for bit before returning (or raising), in any dtype; the
        update waits for :meth:`step`. The closure must compute the loss without calling ``backward``; it runs
        under ``torch.no_grad``.

        Args:
            closure: returns the loss of the current batch as a scalar tensor or float.

        Returns:
            The loss at θ: (ℓ⁺ + ℓ⁻)/2 for the two-sided estimate (equal to ℓ(θ) up to O(ρ²)), ℓ(θ) for the
            one-sided one, as a detached tensor.

        Raises:
            TypeError: when the closure does not return a scalar.
        """
        if not self._seed_synced:
            # Every rank must draw the directions of rank 0.
            check_same_across_ranks("seed", self.defaults["seed"])
            self._seed_synced = True
        rho = float(self.defaults["eps"])
        try:
            if self.defaults["estimate"] == "two_sided":
                self._move_to_(+1)
                loss_plus = _scalar(closure())
                self._move_to_(-1)
                loss_minus = _scalar(closure())
                kappa = (float(loss_plus) - float(loss_minus)) / (2.0 * rho)
                loss = (loss_plus + loss_minus) / 2
            else:
                loss = _scalar(closure())
                self._move_to_(+1)
                loss_plus = _scalar(closure())
                kappa = (float(loss_plus) - float(loss)) / rho
        finally:
            self._move_to_(0)
        self._pending_kappa += kappa
        self._pending_count += 1
        return loss.detach()

    def _reduced_kappa(self) -> float:
        """The pending κ, averaged across processes (where the parameters live: NCCL needs CUDA tensors)."""
        if not is_distributed():
            return self._pending_kappa
        device = next(iter(self._directions)).device
        total = torch.tensor([self._pending_kappa], dtype=torch.float64)
        return float(all_reduce_mean(total, device=device).item())

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:  # type: ignore[override]
        """Take one zeroth-order step.

        With a closure: :meth:`estimate` then the update; returns the loss. Without one: applies the κ
        accumulated by earlier :meth:`estimate` calls (their sum, averaged across ranks) and returns None.

        Raises:
            TypeError: when there is no closure and nothing was estimated since the last step.
        """
        loss = self.estimate(closure) if closure is not None else None
        if self._pending_count == 0:
            raise TypeError(
                "ZOOptimizer.step() needs a closure that returns the loss, or earlier estimate(closure) calls"
            )
        kappa = self._reduced_kappa()
        self.last_kappa = kappa
        self._pending_kappa = 0.0
        self._pending_count = 0
        if math.isfinite(kappa):
            self.zo_updates += 1
            self._update_(kappa)
        else:
            self.zo_skipped += 1
            logger.warning("step %d skipped: the projected gradient is %s", self.zo_step, kappa)
        self.zo_step += 1
        return loss

    def _update_(self, kappa: float) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            decayed = UpdateHyperparams(
                lr=float(group["lr"]),
                weight_decay=float(group["weight_decay"]),
                beta1=float(beta1),
                beta2=float(beta2),
                adam_eps=float(group["adam_eps"]),
                update_count=self.zo_updates,
            )
            undecayed = dataclasses.replace(decayed, weight_decay=0.0)
            for param in group["params"]:
                direction = self._directions.get(param)
                if direction is not None:
                    hp = decayed if decays(param) else undecayed
                    direction.update_(param.data, self.state[param], self.zo_step, kappa, hp)

    def state_bytes(self) -> int:
        """Bytes of the persistent state kept beyond the weights (moments, cached factors)."""
        return sum(
            tensor.numel() * tensor.element_size()
            for state in self.state.values()
            for tensor in state.values()
            if isinstance(tensor, Tensor)
        )

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state, with the step counters that fix the seed sequence of the rest of the run."""
        state = super().state_dict()
        state["zo"] = {
            "step": self.zo_step,
            "updates": self.zo_updates,
            "skipped": self.zo_skipped,
            "pending_kappa": self._pending_kappa,
            "pending_count": self._pending_count,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`, so the run continues the same trajectory.

        Unlike ``torch.optim.Optimizer``, the tensors keep their saved dtype (TeZO's r-vector moments stay in
        float32 for a bfloat16 model).

        Raises:
            CheckpointError: when the state was saved by a differently configured optimizer or for other
                parameters.
        """
        self._check_loadable(state_dict)
        saved_groups = state_dict["param_groups"]
        saved_ids = [i for saved in saved_groups for i in saved["params"]]
        params = [param for group in self.param_groups for param in group["params"]]
        new_state: dict[Tensor, dict[str, Tensor]] = {}
        for saved_id, param in zip(saved_ids, params, strict=True):
            if param in self._directions:
                loaded = state_dict["state"].get(saved_id, {})
                _check_param_state(saved_id, loaded, self.state[param])
                new_state[param] = {key: tensor.to(param.device) for key, tensor in loaded.items()}
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            # Per-group values and scheduler bookkeeping such as ``initial_lr``.
            for key, value in saved.items():
                if key not in _GLOBAL_KEYS and key != "params":
                    group[key] = tuple(value) if key == "betas" else value
        self.state.update(new_state)
        zo = state_dict["zo"]
        self.zo_step = int(zo["step"])
        self.zo_updates = int(zo["updates"])
        self.zo_skipped = int(zo["skipped"])
        self._pending_kappa = float(zo["pending_kappa"])
        self._pending_count = int(zo["pending_count"])

    def _check_loadable(self, state_dict: Any) -> None:
        if not isinstance(state_dict, dict) or not {"state", "param_groups", "zo"} <= state_dict.keys():
            found = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise CheckpointError(
                f"ZOOptimizer state must be a dict with 'state', 'param_groups' and 'zo', got {found}"
            )
        saved_groups = state_dict["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in self.param_groups]:
            raise CheckpointError(
                "ZOOptimizer state has parameter groups of sizes "
                f"{[len(g['params']) for g in saved_groups]}, this optimizer has "
                f"{[len(g['params']) for g in self.param_groups]}"
            )
        for key in _GLOBAL_KEYS:
            saved = saved_groups[0].get(key)
            if saved != self.defaults[key]:
                raise CheckpointError(
                    f"ZOOptimizer state was saved with `{key}`={saved!r}, this optimizer has "
                    f"{self.defaults[key]!r}"
                )


def _check_param_state(saved_id: int, loaded: dict[str, Tensor], current: dict[str, Tensor]) -> None:
    if loaded.keys() != current.keys():
        raise CheckpointError(
            f"ZOOptimizer state of parameter {saved_id} has keys {sorted(loaded)}, expected {sorted(current)}"
        )
    for key, tensor in loaded.items():
        if tuple(tensor.shape) != tuple(current[key].shape):
            raise CheckpointError(
                f"ZOOptimizer state '{key}' of parameter {saved_id} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(current[key].shape)}"
            )


def _check_group_values(lr: Any, weight_decay: Any, betas: Any, adam_eps: Any) -> None:
    check_number("lr", lr, minimum=0)
    check_number("weight_decay", weight_decay, minimum=0)
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ConfigError(f"`betas` must be a pair (beta1, beta2), got {betas!r}")
    check_number("betas[0]", betas[0], minimum=0, less_than=1)
    check_number("betas[1]", betas[1], minimum=0, less_than=1)
    check_number("adam_eps", adam_eps, greater_than=0)


def _scalar(value: Tensor | float) -> Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(
                f"the closure must return a scalar loss, got a tensor of shape {tuple(value.shape)}"
            )
        return value.detach().reshape(())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return torch.tensor(float(value))
    raise TypeError(
        f"the closure must return the loss as a scalar tensor or float, got {type(value).__name__}"
    )


def zo_state_bytes(optimizer_or_trainer: Any) -> int:
    """Persistent bytes a zeroth-order run keeps beyond the weights.

    Counts the optimizer state: dense moments for MeZO-momentum / MeZO-Adam (P or 2P numbers), TeZO's cached
    factors (Σ_l (m_l + n_l)·r) and r-vector moments (Σ_l r or 2·Σ_l r), LOZO's cached V (Σ_l n_l·r), plus the
    dense state of 1-D parameters. Transient memory (activations, the blocks of an update) is not counted.

    Args:
        optimizer_or_trainer: a :class:`ZOOptimizer`, an accelerate-wrapped one, or a trainer whose
            ``optimizer`` is one (a :class:`~paperpack.tezo.ZOTrainer` after training has started).

    Raises:
        TypeError: when no ZOOptimizer is found.

    Examples:
        >>> import torch
        >>> from paperpack.tezo import ZOOptimizer, zo_state_bytes
        >>> W = torch.nn.Parameter(torch.zeros(6, 4))
        >>> zo_state_bytes(ZOOptimizer([W], method="tezo_adam", rank=2))  # 4 bytes x ((6 + 4) * 2 + 2 * 2)
        96
        >>> zo_state_bytes(ZOOptimizer([W], method="mezo_adam"))  # 4 bytes x 2 x 24
        192
    """
    optimizer = unwrap_optimizer(optimizer_or_trainer)
    return optimizer.state_bytes()


def unwrap_optimizer(obj: Any) -> ZOOptimizer:
    """Find the :class:`ZOOptimizer` in a trainer or an accelerate ``AcceleratedOptimizer``.

    Raises:
        TypeError: when there is none.
    """
    candidate = obj
    for _ in range(3):
        if isinstance(candidate, ZOOptimizer):
            return candidate
        if hasattr(candidate, "optimizer"):
            candidate = candidate.optimizer
        else:
            break
    raise TypeError(
        f"expected a ZOOptimizer, an accelerate-wrapped one or a trainer using one, got {type(obj).__name__}"
        + (" whose optimizer is not created yet" if candidate is None else "")
    )
