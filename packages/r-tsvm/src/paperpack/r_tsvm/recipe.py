"""The merge recipe: which models, which method, which parameters; read from YAML in mergekit's format.

.. code-block:: yaml

    merge_method: ties
    base_model: ./base
    models:
      - model: ./base                 # listing the base is allowed: task-vector methods skip it, as mergekit
      - model: ./helpful
        parameters: {weight: 1.0, density: 0.3}     # per-model parameters
      - model: ./honest-lora          # a PEFT LoRA adapter folder: merged as its dense delta
        parameters:
          weight: [0.5, 1.0]          # a gradient over the layers
          density:
            - {filter: self_attn, value: 0.2}       # by parameter name
            - {value: 0.5}
    parameters: {lambda: 0.9}
    dtype: bfloat16
    tokenizer_source: union           # base (default: copied), union, or a model path
    chat_template: chatml             # auto, chatml, or a Jinja template

or ``slices:`` instead of ``models:`` (layer ranges of models stacked or merged slice by slice, e.g. with
``merge_method: passthrough``). Relative paths are resolved against the YAML file's folder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from paperpack.core.checkpoints import PathLike, parse_size
from paperpack.core.errors import CheckpointNotFoundError, ConfigError
from paperpack.core.validation import check_literal_fields
from paperpack.r_tsvm.config import DTYPES, VOCAB_POLICIES, MergeOutputOptions, OutputDtype, VocabPolicy
from paperpack.r_tsvm.registry import MergeMethod, get_method
from paperpack.r_tsvm.settings import check_setting, setting_leaves

__all__ = [
    "CHAT_TEMPLATES",
    "DTYPES",
    "VOCAB_POLICIES",
    "MergeConfig",
    "ModelSpec",
    "OutputDtype",
    "SliceSource",
    "SliceSpec",
    "VocabPolicy",
]

logger = logging.getLogger(__name__)

#: Named chat templates (besides ``auto`` and a Jinja template given in full).
CHAT_TEMPLATES = ("chatml",)
#: mergekit spellings accepted in ``parameters``, mapped to ours.
ALIASES = {"lambda": "scaling", "nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise"}
#: mergekit parameters that change nothing here (memory options), accepted and ignored.
IGNORED = frozenset({"int8_mask"})

_TOP_LEVEL = {
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "vocab_mismatch",
    "max_shard_size",
    "tokenizer_source",
    "chat_template",
}
_MODEL_KEYS = {"model", "parameters", "statistics"}
_SOURCE_KEYS = {"model", "layer_range", "parameters"}
_SLICE_KEYS = {"sources", "base_model", "parameters"}


def _check_parameters(params: Any, where: str, literal: Sequence[str] = ()) -> dict[str, Any]:
    """Check the settings of a parameters mapping; names in ``literal`` (list fields) are taken as is."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where} must be a mapping of parameter names to values, got {params!r}")
    result = {}
    for given, value in params.items():
        if given in IGNORED:
            logger.info("ignoring mergekit's `%s` in %s: it changes nothing here", given, where)
            continue
        name = str(ALIASES.get(given, given))
        if name not in literal:
            check_setting(name, value, where)
        result[name] = value
    return result


@dataclass
class ModelSpec:
    """One model to merge.

    Args:
        model: a model folder, a ``.safetensors`` file or sharded folder, or a PEFT LoRA adapter folder.
        parameters: this model's own parameters: ``weight`` and the method's per-model parameters (TIES's
            ``density``, ...), each a value, a gradient over layers or conditionals by parameter name (see
            :mod:`paperpack.r_tsvm.settings`).
        statistics: a safetensors file with this model's Fishers (``fisher``) or Gram matrices (``regmean``).
    """

    model: str
    parameters: dict[str, Any] = field(default_factory=dict)
    statistics: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"`model` must be a path, got {self.model!r}")
        self.parameters = _check_parameters(self.parameters, f"the parameters of model {self.model!r}")
        if self.statistics is not None and not isinstance(self.statistics, str):
            raise ConfigError(f"`statistics` of model {self.model!r} must be a path, got {self.statistics!r}")


@dataclass
class SliceSource:
    """One model's layers in a slice: layers ``layer_range[0]`` to ``layer_range[1] - 1``.

    Args:
        model: a model folder or checkpoint.
        layer_range: [start, end), as in mergekit.
        parameters: this source's own parameters (as :attr:`ModelSpec.parameters`).
    """

    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"`model` must be a path, got {self.model!r}")
        layers = self.layer_range
        if (
            not isinstance(layers, list | tuple)
            or len(layers) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in layers)
            or not 0 <= layers[0] < layers[1]
        ):
            raise ConfigError(
                f"`layer_range` of {self.model!r} must be [start, end) with 0 <= start < end, got {layers!r}"
            )
        self.layer_range = (int(layers[0]), int(layers[1]))
        self.parameters = _check_parameters(self.parameters, f"the parameters of model {self.model!r}")

    @property
    def length(self) -> int:
        """The number of layers."""
        return self.layer_range[1] - self.layer_range[0]


@dataclass
class SliceSpec:
    """A run of output layers, merged from the same-length layer ranges of its sources.

    Args:
        sources: the models' layer ranges (one for ``passthrough``, which copies them).
        base_model: this slice's base model (default: the recipe's); it must be one of the sources.
        parameters: parameters for this slice (between the sources' own and the recipe's).
    """

    sources: list[SliceSource]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.sources, list) or not self.sources:
            raise ConfigError("a slice needs `sources`: a list of {model, layer_range}")
        self.sources = [s if isinstance(s, SliceSource) else SliceSource(**s) for s in self.sources]
        lengths = {source.length for source in self.sources}
        if len(lengths) != 1:
            ranges = [list(source.layer_range) for source in self.sources]
            raise ConfigError(f"the sources of a slice must have the same number of layers, got {ranges}")
        if not isinstance(self.parameters, dict):
            raise ConfigError(f"`parameters` of a slice must be a mapping, got {self.parameters!r}")

    @property
    def length(self) -> int:
        """The number of output layers."""
        return self.sources[0].length


def _same_path(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


@dataclass
class MergeConfig(MergeOutputOptions):
    """A validated merge recipe (see the module docstring for the YAML form).

    Give ``models`` (every model merged whole) or ``slices`` (layer ranges, merged or stacked slice by slice).

    Args:
        merge_method: a registered method name.
        models: the models to merge. For methods that use a base model, a listed base is skipped (as mergekit
            does); for ``slerp`` the base is the t = 0 end.
        base_model: the base model θ_0 (required by task-vector methods and by LoRA adapters).
        parameters: the method's parameters (its config fields; mergekit's ``lambda``, ``nuslerp_flatten`` and
            ``nuslerp_row_wise`` are accepted), and ``weight`` or per-model parameters for every model. Each
            is a value, a gradient over layers or conditionals by parameter name.
        dtype: the output dtype; None keeps the base model's (the first model's without a base).
        vocab_mismatch: embeddings / LM heads of another vocabulary size (without ``tokenizer_source``):
            "error" (default), "base" (keep the base model's tensor) or "truncate" (cut or pad every model's
            rows to the base's vocabulary, by token id).
        max_shard_size: the size of output shards.
        slices: instead of ``models``, the output's layers slice by slice.
        tokenizer_source: None (the base model's tokenizer files are copied), "base", "union" or a model path:
            the output vocabulary, with embeddings and LM heads aligned by token (as mergekit).
        chat_template: None (keep the tokenizer's), "auto" (the most common among the inputs), "chatml" or a
            Jinja template.

    Raises:
        ConfigError: for an unknown method, unknown parameters, bad values or a model count the method
            refuses.
        CheckpointNotFoundError: for a path that does not exist.
    """

    merge_method: str
    models: list[ModelSpec] | None = None
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    slices: list[SliceSpec] | None = None
    method_config: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        method = get_method(self.merge_method)
        if (self.models is None) == (self.slices is None):
            raise ConfigError("a merge config needs exactly one of `models` and `slices`")
        literal = method.list_parameters
        self.parameters = _check_parameters(self.parameters, "the recipe's `parameters`", literal)
        self._check_names(method, self.parameters, "parameters", shared=True)
        self.method_config = method.make_config(
            {
                name: value
                for name, value in self.parameters.items()
                if name in method.parameters and _plain(value)
            }
        )
        if self.models is not None:
            self._check_models(method)
        else:
            self._check_slices(method)
        check_literal_fields(self)
        parse_size(self.max_shard_size)
        if self.tokenizer_source not in (None, "base", "union") and not isinstance(
            self.tokenizer_source, str
        ):
            raise ConfigError(
                f"`tokenizer_source` must be 'base', 'union' or a model path, got {self.tokenizer_source!r}"
            )
        self._check_chat_template()
        for path in self.paths():
            if not Path(path).exists():
                raise CheckpointNotFoundError(f"{path!r} (named in the merge config) does not exist")

    # -- validation ------------------------------------------------------------------------------------

    def _check_names(self, method: MergeMethod, params: dict[str, Any], where: str, *, shared: bool) -> None:
        per_model = {"weight", *method.per_model}
        allowed = set(method.parameters) | {"weight"} if shared else per_model
        for name, value in params.items():
            if name not in allowed:
                if not shared and name in method.parameters:
                    raise ConfigError(
                        f"`{name}` in `{where}` is not a per-model parameter of {method.name!r}; set it "
                        f"under the top-level `parameters` (per model: {', '.join(sorted(per_model))})"
                    )
                listed = ", ".join(sorted(allowed))
                raise ConfigError(
                    f"unknown parameter {name!r} for merge method {method.name!r} in `{where}`; "
                    f"allowed: {listed}"
                )
            if name == "weight":
                if not method.takes_weights:
                    hint = "; it takes `t` under `parameters`" if method.name == "slerp" else ""
                    raise ConfigError(f"merge method {method.name!r} takes no per-model `weight`{hint}")
                for leaf in setting_leaves(value):
                    if isinstance(leaf, bool) or not isinstance(leaf, int | float) or not math.isfinite(leaf):
                        raise ConfigError(f"`weight` in `{where}` must be a finite number, got {leaf!r}")
                continue
            # Each value the setting can give is checked here, beside the plain values it will meet (the
            # recipe's and this scope's), so that constraints between fields hold (DELLA's density ± ε/2).
            context = {
                key: item
                for scope in (self.parameters, params)
                for key, item in scope.items()
                if key in method.parameters and (_plain(item) or key in method.list_parameters)
            }
            if name in method.list_parameters:
                method.make_config({**context, name: value})
                continue
            for leaf in setting_leaves(value):
                method.make_config({**context, name: leaf})

    def _check_models(self, method: MergeMethod) -> None:
        if not isinstance(self.models, list) or not self.models:
            raise ConfigError("`models` must list at least one model to merge")
        self.models = [spec if isinstance(spec, ModelSpec) else ModelSpec(**spec) for spec in self.models]
        if self.base_model is not None and (method.uses_base or method.optional_base or method.base_first):
            kept = [spec for spec in self.models if not _same_path(spec.model, self.base_model)]
            if len(kept) < len(self.models):
                logger.info("the base model is listed under `models`: skipped, as mergekit does")
                self.models = kept
        for index, spec in enumerate(self.models):
            self._check_names(method, spec.parameters, f"models[{index}].parameters", shared=False)
        count = len(self.models) + (1 if method.base_first and self.base_model is not None else 0)
        method.check_inputs(has_base=self.base_model is not None, count=count, has_statistics=False)
        with_stats = [spec.statistics is not None for spec in self.models]
        if method.statistic == "fisher" and not all(with_stats):
            raise ConfigError("merge method 'fisher' needs `statistics` (a Fisher file) for every model")
        if any(with_stats) and method.statistic is None:
            raise ConfigError(
                f"merge method {method.name!r} takes no `statistics`; only fisher and regmean do"
            )
        if method.statistic == "gram" and any(with_stats) and not all(with_stats):
            raise ConfigError("give `statistics` (Gram matrices) for every model or for none")

    def _check_slices(self, method: MergeMethod) -> None:
        if not isinstance(self.slices, list) or not self.slices:
            raise ConfigError("`slices` must list at least one slice")
        self.slices = [item if isinstance(item, SliceSpec) else SliceSpec(**item) for item in self.slices]
        if method.statistic is not None:
            raise ConfigError(
                f"merge method {method.name!r} needs per-model statistics: use `models`, not `slices`"
            )
        for number, item in enumerate(self.slices):
            item.parameters = _check_parameters(
                item.parameters, f"`slices[{number}].parameters`", method.list_parameters
            )
            self._check_names(method, item.parameters, f"slices[{number}].parameters", shared=True)
            for index, source in enumerate(item.sources):
                where = f"slices[{number}].sources[{index}].parameters"
                self._check_names(method, source.parameters, where, shared=False)
            base = item.base_model or self.base_model
            count = len(item.sources)
            if base is not None and (method.uses_base or method.optional_base or method.base_first):
                in_slice = [s for s in item.sources if _same_path(s.model, base)]
                if method.uses_base and not in_slice:
                    raise ConfigError(
                        f"slices[{number}]: the base model {base!r} must be one of the slice's sources "
                        "(with its layer_range), as in mergekit"
                    )
                count -= len(in_slice[:1]) if not method.base_first else 0
            try:
                method.check_inputs(has_base=base is not None, count=count, has_statistics=False)
            except ConfigError as error:
                raise ConfigError(f"slices[{number}]: {error}") from None

    def _check_chat_template(self) -> None:
        template = self.chat_template
        if template is None or template == "auto" or template in CHAT_TEMPLATES:
            return
        if not isinstance(template, str) or "{" not in template:
            named = ", ".join(repr(name) for name in ("auto", *CHAT_TEMPLATES))
            raise ConfigError(f"`chat_template` must be {named} or a Jinja template, got {template!r}")

    # -- accessors -------------------------------------------------------------------------------------

    @property
    def method(self) -> MergeMethod:
        """The registered merge method."""
        return get_method(self.merge_method)

    @property
    def weights(self) -> list[float] | None:
        """The per-model weights when every model gives a plain number; None otherwise (or when none do)."""
        if not self.models or not all(_plain(spec.parameters.get("weight")) for spec in self.models):
            return None
        values = [spec.parameters.get("weight") for spec in self.models]
        if any(value is None for value in values):
            return None
        return [float(value) for value in values if value is not None]

    def paths(self) -> list[str]:
        """Every input path: base model, models, slice sources, statistics files and the tokenizer source."""
        paths = [self.base_model] if self.base_model else []
        for spec in self.models or []:
            paths += [spec.model] + ([spec.statistics] if spec.statistics else [])
        for item in self.slices or []:
            paths += [source.model for source in item.sources]
            paths += [item.base_model] if item.base_model else []
        if self.tokenizer_source not in (None, "base", "union"):
            paths.append(str(self.tokenizer_source))
        return list(dict.fromkeys(paths))

    # -- (de)serialisation -----------------------------------------------------------------------------

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
            hint = (
                " (mergekit's `tokenizer:` block: use `tokenizer_source`)"
                if unknown[0] == "tokenizer"
                else ""
            )
            raise ConfigError(
                f"unknown merge config key {unknown[0]!r}{hint}; allowed: {', '.join(sorted(_TOP_LEVEL))}"
            )
        if "merge_method" not in data or ("models" not in data and "slices" not in data):
            raise ConfigError("a merge config needs `merge_method` and `models` (or `slices`)")
        base = Path(root) if root is not None else None

        def resolve(path: Any, what: str) -> str:
            if not isinstance(path, str) or not path:
                raise ConfigError(f"`{what}` must be a path, got {path!r}")
            resolved = Path(path).expanduser()
            if base is not None and not resolved.is_absolute():
                resolved = base / resolved
            return str(resolved)

        def entries(items: Any, what: str, keys: set[str]) -> list[dict[str, Any]]:
            if not isinstance(items, list):
                raise ConfigError(f"`{what}` must be a list, got {items!r}")
            result = []
            for index, item in enumerate(items):
                entry = {"model": item} if isinstance(item, str) else item
                if not isinstance(entry, dict) or "model" not in entry:
                    raise ConfigError(
                        f"`{what}[{index}]` must be a mapping with a `model` path, got {entry!r}"
                    )
                extra = sorted(set(entry) - keys)
                if extra:
                    raise ConfigError(
                        f"unknown key {extra[0]!r} in `{what}[{index}]`; allowed: {', '.join(sorted(keys))}"
                    )
                entry = dict(entry, model=resolve(entry["model"], f"{what}[{index}].model"))
                if entry.get("statistics") is not None:
                    entry["statistics"] = resolve(entry["statistics"], f"{what}[{index}].statistics")
                entry["parameters"] = entry.get("parameters") or {}
                result.append(entry)
            return result

        models = None
        if data.get("models") is not None:
            models = [ModelSpec(**entry) for entry in entries(data["models"], "models", _MODEL_KEYS)]
        slices = None
        if data.get("slices") is not None:
            slices = _parse_slices(data["slices"], resolve, entries)
        base_model = data.get("base_model")
        tokenizer_source = data.get("tokenizer_source")
        if tokenizer_source not in (None, "base", "union"):
            tokenizer_source = resolve(tokenizer_source, "tokenizer_source")
        if data.get("out_dtype") is not None and data.get("dtype") not in (None, data["out_dtype"]):
            logger.info("`out_dtype` sets the output dtype; `dtype` (mergekit's compute dtype) is ignored")
        return cls(
            merge_method=data["merge_method"],
            models=models,
            base_model=None if base_model is None else resolve(base_model, "base_model"),
            parameters=dict(data.get("parameters") or {}),
            dtype=data.get("out_dtype", data.get("dtype")),
            vocab_mismatch=data.get("vocab_mismatch", "error"),
            max_shard_size=str(data.get("max_shard_size", "5GB")),
            slices=slices,
            tokenizer_source=tokenizer_source,
            chat_template=data.get("chat_template"),
        )

    @classmethod
    def from_yaml(cls, path: PathLike) -> MergeConfig:
        """Read a merge config from a YAML file (relative paths are resolved against its folder).

        Raises:
            CheckpointNotFoundError: when the file does not exist.
            ConfigError: for a folder, invalid YAML (file and line named) or an invalid config.

        Examples:
            >>> config = MergeConfig.from_yaml("merge.yaml")  # doctest: +SKIP
        """
        from paperpack.core.yaml_io import load_yaml

        file = Path(path)
        if not file.exists():
            raise CheckpointNotFoundError(f"merge config {str(file)!r} does not exist")
        # Numbers such as 5e-1 and 1e300 are numbers (PyYAML alone reads them as strings); a duplicate key is
        # an error; a YAML error names the file and line.
        return cls.from_dict(load_yaml(file), root=file.parent)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a mapping in the YAML layout, with every method parameter filled in."""
        data: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            data["base_model"] = self.base_model
        if self.models is not None:
            models = []
            for spec in self.models:
                entry: dict[str, Any] = {"model": spec.model}
                if spec.parameters:
                    entry["parameters"] = dict(spec.parameters)
                if spec.statistics is not None:
                    entry["statistics"] = spec.statistics
                models.append(entry)
            data["models"] = models
        else:
            data["slices"] = [
                {
                    "sources": [
                        {"model": s.model, "layer_range": list(s.layer_range)}
                        | ({"parameters": dict(s.parameters)} if s.parameters else {})
                        for s in item.sources
                    ],
                    **({"base_model": item.base_model} if item.base_model else {}),
                    **({"parameters": dict(item.parameters)} if item.parameters else {}),
                }
                for item in self.slices or []
            ]
        data["parameters"] = {**asdict(self.method_config), **self.parameters}
        if self.dtype is not None:
            data["dtype"] = self.dtype
        data["vocab_mismatch"] = self.vocab_mismatch
        data["max_shard_size"] = self.max_shard_size
        if self.tokenizer_source is not None:
            data["tokenizer_source"] = self.tokenizer_source
        if self.chat_template is not None:
            data["chat_template"] = self.chat_template
        return data

    def to_yaml(self) -> str:
        """The recipe as YAML text (``merge_checkpoints`` stores it beside its output)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _parse_slices(items: Any, resolve: Any, entries: Any) -> list[SliceSpec]:
    """The ``slices:`` of a recipe mapping, paths resolved."""
    if not isinstance(items, list):
        raise ConfigError(f"`slices` must be a list of {{sources: [...]}}, got {items!r}")
    slices = []
    for number, item in enumerate(items):
        if not isinstance(item, dict) or "sources" not in item:
            raise ConfigError(f"`slices[{number}]` must be a mapping with `sources`, got {item!r}")
        extra = sorted(set(item) - _SLICE_KEYS)
        if extra:
            allowed = ", ".join(sorted(_SLICE_KEYS))
            raise ConfigError(f"unknown key {extra[0]!r} in `slices[{number}]`; allowed: {allowed}")
        sources = entries(item["sources"], f"slices[{number}].sources", _SOURCE_KEYS)
        for index, source in enumerate(sources):
            if "layer_range" not in source:
                raise ConfigError(f"`slices[{number}].sources[{index}]` needs a `layer_range`")
        slice_base = item.get("base_model")
        slices.append(
            SliceSpec(
                sources=[SliceSource(**source) for source in sources],
                base_model=None
                if slice_base is None
                else resolve(slice_base, f"slices[{number}].base_model"),
                parameters=item.get("parameters") or {},
            )
        )
    return slices


def _plain(value: Any) -> bool:
    """Whether a setting is a plain scalar (not a gradient or conditional)."""
    return not isinstance(value, list | dict)
