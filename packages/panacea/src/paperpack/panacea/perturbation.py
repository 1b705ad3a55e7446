"""Weight perturbations as name → tensor dicts: Panacea's closed form, random baselines, applying and storing.

A perturbation maps parameter names (as ``model.named_parameters()`` spells them) to tensors of the same
shapes. Panacea's inner maximisation ``max_{‖ε‖₂≤ρ} h(w+ε)`` has the first-order solution
ε = ρ·∇h(w)/‖∇h(w)‖₂, the norm taken over every perturbed tensor at once (a global L2 norm).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from paperpack.core.checkpoints import load_state_dict, save_state_dict
from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.core.validation import check_int, check_patterns, check_positive

__all__ = [
    "apply_perturbation",
    "check_perturbation",
    "epsilon_scale",
    "global_norm",
    "load_perturbation",
    "perturbation_from_gradient",
    "random_perturbation",
    "save_perturbation",
    "select_parameters",
]

#: The ``content`` entry in the metadata of a saved perturbation.
FORMAT = "paperpack-panacea-perturbation"


def select_parameters(model: nn.Module, patterns: Sequence[str] | None = None) -> dict[str, nn.Parameter]:
    r"""The trainable parameters to perturb: all of them, or those whose name matches one of ``patterns``.

    Args:
        model: the model (a ``PreTrainedModel``, a PEFT model, any module).
        patterns: regular expressions matched with ``re.search`` against parameter names; None selects every
            parameter with ``requires_grad``.

    Returns:
        Name → parameter, in ``named_parameters()`` order.

    Raises:
        ConfigError: when the model has no trainable parameter, or ``patterns`` matches none.

    Examples:
        >>> import torch
        >>> from paperpack.panacea import select_parameters
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> list(select_parameters(model, [r"^1\."]))
        ['1.weight', '1.bias']
    """
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    if not trainable:
        raise ConfigError("the model has no trainable parameter (requires_grad=True) to perturb")
    if patterns is None:
        return trainable
    compiled = check_patterns("perturb_parameters", patterns)
    chosen = {name: p for name, p in trainable.items() if any(c.search(name) for c in compiled)}
    if not chosen:
        examples = ", ".join(list(trainable)[:4])
        raise ConfigError(
            f"`perturb_parameters` {list(patterns)!r} match no trainable parameter; the trainable parameters "
            f"are named like {examples} ({len(trainable)} in all)"
        )
    return chosen


def global_norm(tensors: Iterable[Tensor]) -> float:
    """‖(t_1, …, t_k)‖₂: the L2 norm of all entries of all tensors together, summed in float32 or wider."""
    items = list(tensors)
    if not items:
        return 0.0
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in items) else torch.float32
    norms = torch._foreach_norm(items, 2, dtype=dtype)
    return float(torch.linalg.vector_norm(torch.stack([n.to(items[0].device) for n in norms])))


def epsilon_scale(gradient_norm: float, rho: float) -> float:
    """The c of ε = c·∇h with c = ρ/‖∇h‖₂ (Panacea's closed form); 0 when the gradient is zero or not finite.

    The official code divides by ‖∇h‖ + 1e-7; dividing by ‖∇h‖ itself keeps ‖ε‖₂ = ρ exactly, and a zero (or,
    under a gradient scaler, an overflowed) gradient gives no direction, hence ε = 0.
    """
    if not math.isfinite(gradient_norm) or gradient_norm <= 0.0:
        return 0.0
    return rho / gradient_norm


def perturbation_from_gradient(gradient: Mapping[str, Tensor], rho: float) -> dict[str, Tensor]:
    """ε = ρ·∇h/‖∇h‖₂ over all tensors of ``gradient`` (new tensors; the gradient is not modified).

    Examples:
        >>> import torch
        >>> from paperpack.panacea import global_norm, perturbation_from_gradient
        >>> eps = perturbation_from_gradient({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}, rho=2.0)
        >>> eps["a"].item(), eps["b"].item(), global_norm(eps.values())
        (1.2000000476837158, 1.600000023841858, 2.0)
    """
    check_positive("rho", rho)
    scale = epsilon_scale(global_norm(gradient.values()), rho)
    return {name: grad.detach() * scale for name, grad in gradient.items()}


def check_perturbation(
    perturbation: Mapping[str, Tensor], shapes: Mapping[str, Sequence[int]], *, where: str = "the model"
) -> None:
    """Check that ``perturbation`` fits tensors of ``shapes``: known names, same shapes, finite float values.

    Args:
        perturbation: name → ε.
        shapes: name → shape of the tensors it is meant for (a model's parameters, a weights file's tensors).
        where: how the error messages name what ``shapes`` describes.

    Raises:
        ConfigError: naming the first entry that does not fit and what would.
    """
    if not isinstance(perturbation, Mapping) or not perturbation:
        raise ConfigError("`perturbation` must be a non-empty mapping of parameter names to tensors")
    unknown = [name for name in perturbation if name not in shapes]
    if unknown:
        examples = ", ".join(list(shapes)[:3])
        raise ConfigError(
            f"the perturbation names {len(unknown)} tensor(s) {where} does not have, e.g. {unknown[0]!r}; "
            f"its tensors are named like {examples} (a perturbation of adapter weights needs the PEFT model)"
        )
    for name, tensor in perturbation.items():
        if not isinstance(tensor, Tensor):
            raise ConfigError(f"perturbation entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(shapes[name]):
            raise ConfigError(
                f"perturbation entry {name!r} has shape {tuple(tensor.shape)}, but the tensor of that name "
                f"in {where} has shape {tuple(shapes[name])}"
            )
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"perturbation entry {name!r} must hold finite floating-point values")


@torch.no_grad()
def apply_perturbation(model: nn.Module, perturbation: Mapping[str, Tensor], *, scale: float = 1.0) -> None:
    """Add ``scale·ε`` to the model's parameters in place (Panacea's re-aligned model is w + ε).

    Every entry is checked (known name, same shape, finite values) before any parameter changes.

    Args:
        model: the model whose parameters ``perturbation`` names.
        perturbation: name → ε, e.g. ``trainer.perturbation`` or :func:`load_perturbation`'s result.
        scale: multiplies ε; ``-1.0`` removes a perturbation added before.

    Raises:
        ConfigError: for an unknown name, a shape that does not fit, non-finite values or a non-finite scale.

    Examples:
        >>> import torch
        >>> from paperpack.panacea import apply_perturbation
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> apply_perturbation(model, {"weight": torch.tensor([[1.0, 2.0]])}, scale=0.5)
        >>> model.weight.tolist()
        [[0.5, 1.0]]
    """
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ConfigError(f"`scale` must be a finite number, got {scale!r}")
    params = dict(model.named_parameters())
    check_perturbation(perturbation, {name: param.shape for name, param in params.items()})
    for name, tensor in perturbation.items():
        param = params[name]
        param.add_(tensor.to(device=param.device, dtype=param.dtype), alpha=scale)


def random_perturbation(
    model: nn.Module, norm: float, *, seed: int, parameters: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """A Gaussian direction over the selected parameters, scaled to global L2 norm ``norm``.

    The baseline Panacea compares with: random noise of the same norm as ε. Drawn on the CPU in float32 with
    its own generator (the global random state is untouched, the draw is the same on every device), then cast
    to each parameter's dtype and device.

    Args:
        model: the model to perturb (not modified).
        norm: the global L2 norm of the result.
        seed: the seed of the draw.
        parameters: regular expressions selecting trainable parameters (as ``perturb_parameters``); None
            selects every trainable parameter.

    Returns:
        Name → noise tensor.

    Examples:
        >>> import torch
        >>> from paperpack.panacea import global_norm, random_perturbation
        >>> noise = random_perturbation(torch.nn.Linear(3, 2), 0.5, seed=0)
        >>> sorted(noise), round(global_norm(noise.values()), 6)
        (['bias', 'weight'], 0.5)
    """
    check_positive("norm", norm)
    check_int("seed", seed, minimum=0)
    params = select_parameters(model, parameters)
    generator = torch.Generator().manual_seed(seed)
    noise = {
        name: torch.randn(p.shape, generator=generator, dtype=torch.float32) for name, p in params.items()
    }
    factor = norm / global_norm(noise.values())
    return {
        name: (z * factor).to(device=params[name].device, dtype=params[name].dtype)
        for name, z in noise.items()
    }


def save_perturbation(
    perturbation: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    command: str = "paperpack",
) -> Path:
    """Write a perturbation to one ``.safetensors`` file, atomically.

    The header's metadata holds ``content`` (``"paperpack-panacea-perturbation"``) and ``norm`` (the global L2
    norm) besides ``metadata``. An existing file is refused unless ``overwrite`` is set and it is an earlier
    output of ``command`` (the core's output policy).

    Raises:
        ConfigError: for an empty perturbation, a non-tensor entry or non-finite values, or a path that does
            not end in ``.safetensors``.
    """
    target = Path(path)
    if target.suffix != ".safetensors":
        raise ConfigError(f"a perturbation is saved as one .safetensors file, got the path {str(path)!r}")
    if not isinstance(perturbation, Mapping) or not perturbation:
        raise ConfigError("`perturbation` must be a non-empty mapping of parameter names to tensors")
    tensors = {}
    for name, tensor in perturbation.items():
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise ConfigError(f"perturbation entry {name!r} must be a floating-point tensor")
        if not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"perturbation entry {name!r} holds non-finite values")
        tensors[name] = tensor.detach().to("cpu").contiguous()
    header = {"content": FORMAT, "norm": repr(global_norm(tensors.values())), **dict(metadata or {})}
    return save_state_dict(tensors, target, metadata=header, command=command, overwrite=overwrite)


def load_perturbation(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a perturbation written by :func:`save_perturbation` (or any safetensors file of name → tensor).

    Raises:
        CheckpointNotFoundError: when ``path`` does not exist.
        CheckpointError: for a pickle file, a corrupt file or one without tensors.
    """
    tensors = load_state_dict(path, device=device)
    if not tensors:
        raise CheckpointError(f"{str(path)!r} holds no tensors")
    return tensors
