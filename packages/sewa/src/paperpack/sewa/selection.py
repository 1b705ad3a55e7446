"""SeWA's selection: learn which k of the last K snapshots to average with a relaxed probabilistic mask.

Symbols (paper arXiv:2502.10119 and the reconstruction in the paper note, which follows ProbMask):

- w_1 .. w_K: the window of snapshots; s ∈ [0, 1]^K: keep-probabilities, initialised at s_i = k / K.
- Relaxed Bernoulli (binary Gumbel-Softmax) sample, Eq. (mask):
  m_i = σ((logit(s_i) + log u_i - log(1 - u_i)) / τ), u_i ~ U(0, 1).
- Soft average, Eq. (avg): w̄(m) = Σ_i m_i w_i / Σ_i m_i (``averaging="normalized"``) or Σ_i m_i w_i / k.
- Objective: E_m[F(w̄(m))] with F the training loss, estimated with M Monte Carlo samples; its gradient in s
  is the reparameterised one, ∇_s (1/M) Σ_j F(w̄(m_j)).
- Step and projection: s <- Π(s - η · step(g)), Π the projection onto {0 <= s <= 1, Σ s = k}.
- Annealing: τ goes from τ_0 to τ_min over the I iterations.
- Final mask: the k largest s_i; w* = (1/k) Σ_{i selected} w_i. When s does not single out k snapshots (a
  tie at the k-th place, e.g. s collapsed to 0, which ``projection="sum_le_k"`` allows), the tie goes to the
  later snapshots, with a ``MaskTieWarning`` and the count in ``SeWAResult.tie_broken``: never silently.

Vectorisation: the M masks of an iteration are drawn together; the window is stacked once into one (K × P)
matrix per dtype, so the M soft averages of all parameters are one (M × K)(K × P) product per iteration,
written in place into buffers built once per search (``SampleParameters``), whose views are each sample's
parameter leaves. The network passes are either M calls of ``loss_fn`` (each may draw its own minibatch)
followed by one backward call for the M losses (sample j's loss reaches only sample j's leaves, so their
gradients do not mix; ``backward_per_sample``: one backward call after each loss), or one ``torch.func.vmap``
call (``vmap_loss=True``). The chain rule is split so that the network's backward pass stops at the averaged
parameters: ∂F/∂coef_ji = <∂F/∂w̄_j, w_i>, one more product of the M gradients with the stacked window; the
rest, through the average's normalisation and the mask formula to s, is on K numbers per sample and written
out (``_relaxed_mask_and_slope``), as are Adam and the projection, in float64 numpy (the tests check all of it
against a literal autograd reference). Memory during the search: the window (K × P), the M averages and their
M gradients (2M × P), and the activations of the M passes until the backward call (of one pass with
``backward_per_sample``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

from paperpack.core.device import resolve_device
from paperpack.core.errors import ConfigError
from paperpack.sewa.config import SeWAConfig
from paperpack.sewa.projection import project
from paperpack.sewa.snapshots import SampleParameters, StackedWindow, check_snapshots, mean_of

__all__ = [
    "LossFn",
    "MaskTieWarning",
    "SeWAResult",
    "relaxed_mask",
    "select_snapshots",
    "temperature_at",
    "top_k_indices",
]

logger = logging.getLogger(__name__)

LossFn = Callable[[Mapping[str, Tensor]], Tensor]

# s is clamped into [EPS, 1 - EPS] before the logit, so that s_i = 0 or 1 after a projection stays finite.
LOGIT_EPS = 1e-6
# u is clamped away from 0 and 1 so that the logistic noise log u - log(1 - u) stays finite.
NOISE_EPS = 1e-12
# Floor of Σ_i m_i in the normalised average, for a sample in which every m_i underflows to zero.
MASS_EPS = 1e-12
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class MaskTieWarning(UserWarning):
    """SeWA's final keep-probabilities did not single out k snapshots; the tie rule picked some of them."""


@dataclass(frozen=True)
class SeWAResult:
    """What ``select_snapshots`` found.

    Attributes:
        indices: Positions of the k selected snapshots in the window, sorted ascending.
        probabilities: The final keep-probabilities s (length K, float64, CPU).
        weights: The averaging weight of each snapshot in ``state_dict`` (1/k on ``indices``, 0 elsewhere).
        state_dict: w* = (1/k) Σ_{i ∈ indices} w_i over every key of the snapshots, on their device and dtype.
        loss_history: Mean of the M Monte Carlo losses at each iteration.
        tie_broken: How many of ``indices`` s did not single out: the selected snapshots whose s equals that
            of a left-out one, picked by the tie rule (later snapshots first). 0 when s ranks k snapshots
            strictly above the rest; k when s collapsed to a constant (then the result is LAWA's last k).
    """

    indices: list[int]
    probabilities: Tensor
    weights: Tensor
    state_dict: dict[str, Tensor]
    loss_history: list[float]
    tie_broken: int = 0


def temperature_at(config: SeWAConfig, iteration: int) -> float:
    """τ at ``iteration`` (0-based): τ_0 at the first iteration, τ_min at the last.

    ``exponential``: τ_0 (τ_min/τ_0)^(t/(I-1)); ``linear``: τ_0 + (τ_min - τ_0) t/(I-1); ``constant``: τ_0.

    Examples:
        >>> from paperpack.sewa import SeWAConfig
        >>> from paperpack.sewa.selection import temperature_at
        >>> config = SeWAConfig(iterations=3, temperature_start=1.0, temperature_end=0.25)
        >>> [temperature_at(config, t) for t in range(3)]
        [1.0, 0.5, 0.25]
    """
    start, end = config.temperature_start, config.temperature_end
    if config.temperature_schedule == "constant" or config.iterations == 1:
        return start
    progress = iteration / (config.iterations - 1)
    if config.temperature_schedule == "linear":
        return start + (end - start) * progress
    return float(start * (end / start) ** progress)


def logistic_noise(generator: torch.Generator, num_samples: int, size: int) -> NDArray[np.float64]:
    """Log u - log(1 - u) for u ~ U(0, 1), shape (M, K), float64 (drawn on the CPU: device-independent)."""
    u = np.clip(
        torch.rand((num_samples, size), generator=generator, dtype=torch.float64).numpy(),
        NOISE_EPS,
        1.0 - NOISE_EPS,
    )
    noise: NDArray[np.float64] = np.log(u) - np.log1p(-u)
    return noise


def relaxed_mask(s: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """Eq. (mask): m = σ((logit(s) + noise) / τ), the binary-concrete relaxation of m_i ~ Bernoulli(s_i).

    Args:
        s: Keep-probabilities, shape (K,).
        noise: Logistic noise, shape (M, K).
        temperature: τ > 0; as τ -> 0 the samples approach {0, 1}.

    Returns:
        Soft masks in (0, 1), shape (M, K), differentiable in ``s``.
    """
    return torch.sigmoid((torch.logit(s.clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)) + noise) / temperature)


def select_snapshots(
    snapshots: Sequence[Mapping[str, Tensor]],
    loss_fn: LossFn,
    config: SeWAConfig | None = None,
    *,
    device: str | torch.device | None = None,
    reduce_gradient: Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
) -> SeWAResult:
    """Learn which ``config.k`` of the K ``snapshots`` to average (SeWA) and return their mean.

    Args:
        snapshots: The window w_1 .. w_K (oldest first): state dicts with equal keys, shapes and dtypes.
            Usually only the trainable parameters. Floating tensors are averaged; others pass through from
            the latest snapshot. They are read, never modified.
        loss_fn: ``loss_fn(params)`` returns the scalar loss F of a model whose parameters are ``params`` (a
            mapping with the snapshots' keys, on ``device``); compute it with
            ``torch.func.functional_call(model, params, batch)`` so gradients reach ``params``. It may draw a
            new minibatch at each call (one per Monte Carlo sample, as the paper does). The parameter tensors
            are the same objects at every iteration, rewritten in place: use them within the call only.
        config: The hyperparameters (``SeWAConfig()`` when ``None``).
        device: Where the window is stacked and averaged (``"cpu"``, ``"cuda:0"``, ``"auto"``, a
            ``torch.device``); ``None``: the device of the snapshots' tensors.
        reduce_gradient: Applied to the mask gradient (shape (K,)) at every iteration before the step.
            ``SeWACallback`` passes a mean across data-parallel ranks, so that every rank
            follows the same s.
        progress: Show a tqdm bar over the iterations.

    Returns:
        The selection, its probabilities and the averaged state dict.

    Raises:
        TypeError: ``snapshots`` is not a sequence of state dicts, ``config`` is not a ``SeWAConfig``,
            ``loss_fn`` is not callable or returns something other than a tensor.
        ConfigError: an empty window; k larger than the window; ``loss_fn`` returns a non-scalar, a
            non-finite value, or a loss that does not depend on the parameters.
        CheckpointError: snapshots with different keys, shapes or dtypes.

    Examples:
        >>> import torch
        >>> from paperpack.sewa import SeWAConfig, select_snapshots
        >>> target = torch.tensor([1.0, -1.0])
        >>> window = [{"w": target + (5.0 if i in (1, 3) else 0.1 * i)} for i in range(6)]
        >>> loss = lambda params: ((params["w"] - target) ** 2).sum()
        >>> result = select_snapshots(window, loss, SeWAConfig(k=2, iterations=60))
        >>> result.indices
        [0, 2]
    """
    config = SeWAConfig() if config is None else config
    if not isinstance(config, SeWAConfig):
        raise TypeError(f"`config` must be a SeWAConfig, got {type(config).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}")
    keys = check_snapshots(snapshots)
    size = len(snapshots)
    if config.k > size:
        raise ConfigError(f"`k` must be <= the number of snapshots K={size}, got {config.k}")
    float_keys = [key for key in keys if snapshots[0][key].is_floating_point()]
    if not float_keys:
        raise ConfigError("`snapshots` hold no floating-point tensors: there is nothing to average")
    target = resolve_device(device) if device is not None else snapshots[0][float_keys[0]].device
    # Integer buffers pass through unchanged: they are not averaged, so they get no mask gradient.
    fixed = {key: snapshots[-1][key].to(target) for key in keys if key not in float_keys}

    with torch.enable_grad():
        probabilities, history = _search(
            snapshots,
            keys=float_keys,
            fixed=fixed,
            loss_fn=loss_fn,
            config=config,
            device=target,
            reduce_gradient=reduce_gradient,
            progress=progress,
        )
    indices = top_k_indices(probabilities, config.k)
    tie_broken = _tie_broken(probabilities, indices)
    if tie_broken:
        _warn_tie(probabilities, config, tie_broken)
    weights = torch.zeros(size, dtype=torch.float64)
    weights[indices] = 1.0 / config.k
    logger.info(
        "SeWA kept snapshots %s of %d (s = %s)", indices, size, [round(p, 3) for p in probabilities.tolist()]
    )
    return SeWAResult(
        indices=indices,
        probabilities=probabilities,
        weights=weights,
        state_dict=mean_of(snapshots, indices),
        loss_history=history,
        tie_broken=tie_broken,
    )


def top_k_indices(probabilities: Tensor, k: int) -> list[int]:
    """The k largest entries of ``probabilities``, ties broken towards later snapshots, sorted ascending."""
    values = probabilities.tolist()
    order = sorted(range(len(values)), key=lambda i: (-values[i], -i))
    return sorted(order[:k])


def _tie_broken(probabilities: Tensor, indices: list[int]) -> int:
    """How many of the selected ``indices`` share their s with a left-out snapshot (0 without a tie)."""
    values = probabilities.tolist()
    chosen = set(indices)
    left_out = {values[i] for i in range(len(values)) if i not in chosen}
    return sum(values[i] in left_out for i in indices)


def _warn_tie(probabilities: Tensor, config: SeWAConfig, tie_broken: int) -> None:
    mass = float(probabilities.sum())
    why = (
        f"s collapsed to zero mass (Σ s = {mass:.3g}), which projection='sum_le_k' allows; with "
        f"averaging={config.averaging!r} the search can lower the loss by shrinking the average"
        if mass <= LOGIT_EPS * probabilities.numel()
        else f"s ties at the k-th place (Σ s = {mass:.3g})"
    )
    picked = (
        "all of them are the latest snapshots, LAWA's choice"
        if tie_broken == config.k
        else "the latest of the tied snapshots"
    )
    warnings.warn(
        f"SeWA's keep-probabilities do not single out k={config.k} snapshots: {why}. {tie_broken} of the "
        f"{config.k} kept snapshots were picked by the tie rule ({picked}); SeWAResult.tie_broken records "
        "it. projection='sum_eq_k' keeps Σ s = k",
        MaskTieWarning,
        stacklevel=3,
    )


def _search(
    snapshots: Sequence[Mapping[str, Tensor]],
    *,
    keys: list[str],
    fixed: dict[str, Tensor],
    loss_fn: LossFn,
    config: SeWAConfig,
    device: torch.device,
    reduce_gradient: Callable[[Tensor], Tensor] | None,
    progress: bool,
) -> tuple[Tensor, list[float]]:
    size, k, samples = len(snapshots), config.k, config.mc_samples
    window = StackedWindow(snapshots, keys, device)
    sample_params = None if config.vmap_loss else SampleParameters(window, samples, fixed)
    generator = torch.Generator().manual_seed(config.seed)
    # The mask's bookkeeping is on K numbers: float64 numpy arrays, a microsecond per operation.
    s = np.full(size, k / size)
    first_moment, second_moment = np.zeros(size), np.zeros(size)
    history: list[float] = []
    bar = tqdm(range(config.iterations), desc="SeWA mask", disable=not progress, leave=False)
    for iteration in bar:
        temperature = temperature_at(config, iteration)
        noise = logistic_noise(generator, samples, size)
        masks, mask_slopes = _relaxed_mask_and_slope(s, noise, temperature)
        if config.averaging == "normalized":
            mass = masks.sum(axis=1, keepdims=True)
            coefficients = masks / np.maximum(mass, MASS_EPS)
        else:
            coefficients = masks / k
        loss, coefficient_grads = _loss_gradients(
            torch.from_numpy(coefficients.astype(window.coefficient_dtype)),
            window,
            sample_params,
            fixed=fixed,
            loss_fn=loss_fn,
            per_sample=config.backward_per_sample,
            iteration=iteration,
        )
        # Chain rule from ∂F/∂coef (M × K) back to s: through the average, then through the mask, summed over
        # the M samples, divided by M (the Monte Carlo mean).
        outer = coefficient_grads.numpy() / samples
        if config.averaging == "normalized":
            # coef_ji = m_ji / max(Σ_l m_jl, ε): ∂/∂m_jl = (outer_jl - Σ_i outer_ji coef_ji) / max(Σ m_j, ε),
            # the second term only where the mass is above its floor ε.
            through_mass = (outer * coefficients).sum(axis=1, keepdims=True) * (mass >= MASS_EPS)
            mask_grads = (outer - through_mass) / np.maximum(mass, MASS_EPS)
        else:
            mask_grads = outer / k
        direction = (mask_grads * mask_slopes).sum(axis=0)
        if reduce_gradient is not None:
            direction = reduce_gradient(torch.from_numpy(direction)).to("cpu", torch.float64).numpy()
        if not np.isfinite(direction).all():
            raise ConfigError(
                f"the mask gradient is not finite at iteration {iteration}: {direction.tolist()}"
            )
        if config.mask_optimizer == "adam":
            direction = _adam_direction(direction, first_moment, second_moment, iteration + 1)
        s = project(s - config.mask_lr * direction, k, config.projection)
        history.append(loss)
        if progress:
            bar.set_postfix(loss=f"{loss:.4g}", tau=f"{temperature:.3g}")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "SeWA iteration %d: tau=%.4g loss=%.6g s=%s", iteration, temperature, loss, s.tolist()
            )
    return torch.from_numpy(s), history


def _relaxed_mask_and_slope(
    s: NDArray[np.float64], noise: NDArray[np.float64], temperature: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``relaxed_mask`` on arrays, and ∂m_ji/∂s_i = σ'(z)/τ · 1/(s_c(1 - s_c)) (0 where the clamp acts)."""
    clamped = np.clip(s, LOGIT_EPS, 1.0 - LOGIT_EPS)
    inside = (s >= LOGIT_EPS) & (s <= 1.0 - LOGIT_EPS)
    masks = 1.0 / (1.0 + np.exp(-(np.log(clamped / (1.0 - clamped)) + noise) / temperature))
    slopes = masks * (1.0 - masks) / temperature * (inside / (clamped * (1.0 - clamped)))
    return masks, slopes


def _adam_direction(
    gradient: NDArray[np.float64], first: NDArray[np.float64], second: NDArray[np.float64], step: int
) -> NDArray[np.float64]:
    """Adam's bias-corrected direction m̂ / (sqrt(v̂) + ε); updates the moment buffers in place."""
    beta1, beta2 = ADAM_BETAS
    first *= beta1
    first += (1.0 - beta1) * gradient
    second *= beta2
    second += (1.0 - beta2) * gradient * gradient
    corrected_first = first / (1.0 - beta1**step)
    corrected_second = second / (1.0 - beta2**step)
    direction: NDArray[np.float64] = corrected_first / (np.sqrt(corrected_second) + ADAM_EPS)
    return direction


def _loss_gradients(
    coefficients: Tensor,
    window: StackedWindow,
    sample_params: SampleParameters | None,
    *,
    fixed: dict[str, Tensor],
    loss_fn: LossFn,
    per_sample: bool,
    iteration: int,
) -> tuple[float, Tensor]:
    """Mean loss of the M soft averages and ∂F_j/∂coef_ji, shape (M, K), float64 on the CPU.

    One product with the window gives all M averages, one flat row per sample and dtype. Without vmap
    (``sample_params`` given) the rows are written into fixed buffers whose views are the samples' parameter
    leaves, the M losses are computed one ``loss_fn`` call each, and one backward call for the M losses hands
    back every leaf's gradient (sample j's loss reaches only sample j's leaves, so the gradients do not mix;
    ``per_sample``: one backward call after each loss, holding one sample's graph at a time). With
    vmap each row is one leaf and the parameters are batched views of it. Either way one more product with the
    window contracts the M gradients into the K partial derivatives.
    """
    samples = coefficients.shape[0]
    if sample_params is None:
        averages = window.combine(coefficients)
        leaves = {dtype: flat.requires_grad_(True) for dtype, flat in averages.items()}
        batched_fixed = {key: value.expand(samples, *value.shape) for key, value in fixed.items()}
        losses = torch.func.vmap(loss_fn, randomness="different")(
            {**window.unflatten(leaves), **batched_fixed}
        )
        _check_losses(losses, (samples,), iteration)
        gradients = _gradients(losses.sum(), leaves)
        return float(losses.detach().mean()), window.contract(gradients)
    sample_params.fill(coefficients)
    values: list[Tensor] = []
    grads: list[Tensor | None] = []
    for sample, params in enumerate(sample_params.params):
        loss = loss_fn(dict(params))  # a new mapping at every call, as the loss may change it
        _check_losses(loss, (), iteration, sample, finite=False)
        _check_differentiable(loss)
        values.append(loss)
        if per_sample or sample == samples - 1:
            first = sample if per_sample else 0
            targets = sample_params.leaves[sample] if per_sample else sample_params.all_leaves
            grads.extend(torch.autograd.grad(values[first:], targets, allow_unused=True))
            values[first:] = [value.detach() for value in values[first:]]
    count = len(sample_params.leaves[0])
    for sample in range(samples):
        if all(grad is None for grad in grads[sample * count : (sample + 1) * count]):
            _raise_unused(sample, iteration)
    # One device synchronisation per iteration for the losses; a non-finite one is traced to its sample.
    loss_values = torch.stack(values).tolist()
    for sample, value in enumerate(loss_values):
        if not math.isfinite(value):
            _check_losses(values[sample], (), iteration, sample)
    return sum(loss_values) / samples, window.contract(sample_params.gradients(grads))


def _check_differentiable(loss: Tensor) -> None:
    if not loss.requires_grad:
        raise ConfigError(
            "`loss_fn` returned a loss that does not depend on the averaged parameters: compute it from "
            "`params` (e.g. with torch.func.functional_call) inside autograd, without .detach() or "
            "torch.no_grad()"
        )


def _raise_unused(sample: int | None = None, iteration: int | None = None) -> None:
    where = "" if sample is None else f" (iteration {iteration}, Monte Carlo sample {sample})"
    raise ConfigError(
        f"`loss_fn` returned a loss that does not depend on any of the averaged parameters{where}"
    )


def _gradients(loss: Tensor, leaves: dict[torch.dtype, Tensor]) -> dict[torch.dtype, Tensor]:
    """∂loss/∂leaves, one flat gradient per dtype (zeros for a dtype the loss does not use)."""
    _check_differentiable(loss)
    dtypes = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[dtype] for dtype in dtypes], allow_unused=True)
    if all(grad is None for grad in grads):
        _raise_unused()
    return {
        dtype: torch.zeros_like(leaves[dtype]) if grad is None else grad
        for dtype, grad in zip(dtypes, grads, strict=True)
    }


def _check_losses(
    loss: object, shape: tuple[int, ...], iteration: int, sample: int | None = None, *, finite: bool = True
) -> None:
    if not isinstance(loss, Tensor):
        raise TypeError(f"`loss_fn` must return a torch.Tensor, got {type(loss).__name__}")
    where = f"iteration {iteration}" + (f", Monte Carlo sample {sample}" if sample is not None else "")
    if tuple(loss.shape) != shape:
        expected = "a scalar (shape ())" if not shape else f"one scalar per sample under vmap (shape {shape})"
        raise ConfigError(f"`loss_fn` must return {expected}, got shape {tuple(loss.shape)} at {where}")
    if not loss.is_floating_point():
        raise ConfigError(f"`loss_fn` must return a floating-point loss, got dtype {loss.dtype} at {where}")
    if finite and not bool(torch.isfinite(loss).all()):
        value = loss.detach().tolist()
        raise ConfigError(
            f"`loss_fn` returned {value} at {where}: SeWA needs a finite loss "
            "(check the snapshots and the data)"
        )
