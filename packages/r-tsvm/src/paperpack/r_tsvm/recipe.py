"""The merge recipe: which models, which method, which parameters; read from YAML close to mergekit's format.

.. code-block:: yaml

    merge_method: r_tsvm
    base_model: ./base
    models:
      - model: ./helpful
        parameters: {weight: 1.0}
      - model: ./honest-lora          # a PEFT LoRA adapter folder: merged as its dense delta
      - model: ./harmless
    parameters: {alpha: 1.0, kappa: 3.0}
    dtype: bfloat16

Relative paths are resolved against the YAML file's folder.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from paperpack.core.checkpoints import PathLike, parse_size
from paperpack.core.errors import CheckpointNotFoundError, ConfigError
from paperpack.core.validation import check_choice
from paperpack.r_tsvm.registry import get_method

__all__ = ["DTYPES", "VOCAB_POLICIES", "MergeConfig", "ModelSpec"]

#: Output dtypes by name (None keeps each tensor's dtype in the base model).
DTYPES = ("float32", "bfloat16", "float16")
#: What to do when embeddings / LM heads have different vocabulary sizes.
VOCAB_POLICIES = ("error", "base", "truncate")
#: mergekit spellings accepted in ``parameters``, mapped to ours.
ALIASES = {"lambda": "scaling"}

_TOP_LEVEL = {
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "vocab_mismatch",
    "max_shard_size",
}
_MODEL_KEYS = {"model", "parameters", "statistics"}


@dataclass
class ModelSpec:
    """One model to merge.

    Args:
        model: a model folder, a ``.safetensors`` file or sharded folder, or a PEFT LoRA adapter folder.
        weight: w_t (None: the method's default).
        statistics: a safetensors file with this model's Fishers (``fisher``) or Gram matrices (``regmean``).
    """

    model: str
    weight: float | None = None
    statistics: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"`model` must be a path, got {self.model!r}")
        if self.weight is not None and (
            isinstance(self.weight, bool)
            or not isinstance(self.weight, int | float)
            or not math.isfinite(self.weight)
        ):
            raise ConfigError(
                f"`weight` of model {self.model!r} must be a finite number, got {self.weight!r}"
            )
        if self.statistics is not None and not isinstance(self.statistics, str):
            raise ConfigError(f"`statistics` of model {self.model!r} must be a path, got {self.statistics!r}")


@dataclass
class MergeConfig:
    """A validated merge recipe (see the module docstring for the YAML form).

    Args:
        merge_method: a registered method name.
        models: the models to merge.
        base_model: the base model θ_0 (required by task-vector methods and by LoRA adapters).
        parameters: the method's parameters (its config fields; ``lambda`` is accepted for ``scaling``).
        dtype: the output dtype; None keeps the base model's (the first model's without a base).
        vocab_mismatch: embeddings / LM heads of another vocabulary size: "error" (default), "base" (keep the
            base model's tensor) or "truncate" (cut or pad every model's rows to the base's vocabulary).
        max_shard_size: the size of output shards.

    Raises:
        ConfigError: for an unknown method, unknown parameters, bad values or a model count the method
            refuses.
        CheckpointNotFoundError: for a path that does not exist.
    """

    merge_method: str
    models: list[ModelSpec]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    vocab_mismatch: str = "error"
    max_shard_size: str = "5GB"
    method_config: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        method = get_method(self.merge_method)
        if not isinstance(self.models, list) or not self.models:
            raise ConfigError("`models` must list at least one model to merge")
        self.models = [spec if isinstance(spec, ModelSpec) else ModelSpec(**spec) for spec in self.models]
        if not isinstance(self.parameters, dict):
            raise ConfigError(
                f"`parameters` must be a mapping of parameter names to values, got {self.parameters!r}"
            )
        self.parameters = {ALIASES.get(name, name): value for name, value in self.parameters.items()}
        self.method_config = method.make_config(self.parameters)
        method.check_inputs(
            has_base=self.base_model is not None, count=len(self.models), has_statistics=False
        )
        weights = [spec.weight for spec in self.models]
        if any(weight is not None for weight in weights) and any(weight is None for weight in weights):
            raise ConfigError("give `weight` for every model or for none")
        if weights[0] is not None and method.name == "slerp":
            raise ConfigError("slerp takes `t` under `parameters`, not per-model weights")
        with_stats = [spec.statistics is not None for spec in self.models]
        if method.statistic == "fisher" and not all(with_stats):
            raise ConfigError("merge method 'fisher' needs `statistics` (a Fisher file) for every model")
        if any(with_stats) and method.statistic is None:
            raise ConfigError(
                f"merge method {method.name!r} takes no `statistics`; only fisher and regmean do"
            )
        if method.statistic == "gram" and any(with_stats) and not all(with_stats):
            raise ConfigError("give `statistics` (Gram matrices) for every model or for none")
        if self.dtype is not None:
            check_choice("dtype", self.dtype, DTYPES)
        check_choice("vocab_mismatch", self.vocab_mismatch, VOCAB_POLICIES)
        parse_size(self.max_shard_size)
        for path in self.paths():
            if not Path(path).exists():
                raise CheckpointNotFoundError(f"{path!r} (named in the merge config) does not exist")

    @property
    def weights(self) -> list[float] | None:
        """The per-model weights, or None when none are given."""
        if self.models[0].weight is None:
            return None
        return [float(spec.weight) for spec in self.models if spec.weight is not None]

    def paths(self) -> list[str]:
        """Every input path: base model, models and statistics files."""
        paths = [self.base_model] if self.base_model else []
        paths += [spec.model for spec in self.models]
        paths += [spec.statistics for spec in self.models if spec.statistics]
        return paths

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, root: PathLike | None = None) -> MergeConfig:
        """Build a config from a mapping in the YAML layout; relative paths are resolved against ``root``.

        Raises:
            ConfigError: for unknown keys, naming the allowed ones.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a merge config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - _TOP_LEVEL)
        if unknown:
            raise ConfigError(
                f"unknown merge config key {unknown[0]!r}; allowed: {', '.join(sorted(_TOP_LEVEL))}"
            )
        if "merge_method" not in data or "models" not in data:
            raise ConfigError("a merge config needs `merge_method` and `models`")
        base = Path(root) if root is not None else None

        def resolve(path: Any, what: str) -> str:
            if not isinstance(path, str) or not path:
                raise ConfigError(f"`{what}` must be a path, got {path!r}")
            resolved = Path(path).expanduser()
            if base is not None and not resolved.is_absolute():
                resolved = base / resolved
            return str(resolved)

        models = data["models"]
        if not isinstance(models, list):
            raise ConfigError(
                f"`models` must be a list of {{model: PATH, parameters: {{weight: W}}}}, got {models!r}"
            )
        specs = []
        for index, item in enumerate(models):
            entry = {"model": item} if isinstance(item, str) else item
            if not isinstance(entry, dict) or "model" not in entry:
                raise ConfigError(f"`models[{index}]` must be a mapping with a `model` path, got {entry!r}")
            extra = sorted(set(entry) - _MODEL_KEYS)
            if extra:
                raise ConfigError(
                    f"unknown key {extra[0]!r} in `models[{index}]`; "
                    f"allowed: {', '.join(sorted(_MODEL_KEYS))}"
                )
            params = dict(entry.get("parameters") or {})
            weight = params.pop("weight", None)
            if params:
                name = sorted(params)[0]
                raise ConfigError(
                    f"per-model parameter {name!r} in `models[{index}]` is not supported: only `weight` "
                    f"is per model; set {name!r} under the top-level `parameters`"
                )
            statistics = entry.get("statistics")
            specs.append(
                ModelSpec(
                    model=resolve(entry["model"], f"models[{index}].model"),
                    weight=weight,
                    statistics=None
                    if statistics is None
                    else resolve(statistics, f"models[{index}].statistics"),
                )
            )
        base_model = data.get("base_model")
        return cls(
            merge_method=data["merge_method"],
            models=specs,
            base_model=None if base_model is None else resolve(base_model, "base_model"),
            parameters=dict(data.get("parameters") or {}),
            dtype=data.get("dtype"),
            vocab_mismatch=data.get("vocab_mismatch", "error"),
            max_shard_size=str(data.get("max_shard_size", "5GB")),
        )

    @classmethod
    def from_yaml(cls, path: PathLike) -> MergeConfig:
        """Read a merge config from a YAML file (relative paths are resolved against its folder).

        Raises:
            CheckpointNotFoundError: when the file does not exist.
            ConfigError: for invalid YAML or an invalid config.

        Example:
            >>> config = MergeConfig.from_yaml("merge.yaml")  # doctest: +SKIP
        """
        file = Path(path)
        if not file.is_file():
            raise CheckpointNotFoundError(f"merge config {str(file)!r} does not exist")
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{file} is not valid YAML: {error}") from None
        return cls.from_dict(data, root=file.parent)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a mapping in the YAML layout, with every method parameter filled in."""
        models = []
        for spec in self.models:
            entry: dict[str, Any] = {"model": spec.model}
            if spec.weight is not None:
                entry["parameters"] = {"weight": spec.weight}
            if spec.statistics is not None:
                entry["statistics"] = spec.statistics
            models.append(entry)
        data: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            data["base_model"] = self.base_model
        data["models"] = models
        data["parameters"] = asdict(self.method_config)
        if self.dtype is not None:
            data["dtype"] = self.dtype
        data["vocab_mismatch"] = self.vocab_mismatch
        data["max_shard_size"] = self.max_shard_size
        return data

    def to_yaml(self) -> str:
        """The recipe as YAML text (``merge_checkpoints`` stores it beside its output)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
