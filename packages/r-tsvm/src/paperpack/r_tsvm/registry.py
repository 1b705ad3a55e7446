"""The registry of merge methods: each a typed config, a function on tensors and what it needs.

Methods join by one explicit :func:`register_method` call; names are validated by the core's
:class:`~paperpack.core.registry.Registry`. A method's parameters are the fields of its config dataclass, so a
YAML recipe or CLI call is checked against them before any tensor is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from paperpack.core.errors import ConfigError
from paperpack.core.registry import Registry
from paperpack.r_tsvm import config as c
from paperpack.r_tsvm import methods as m

__all__ = ["MergeMethod", "get_method", "list_methods", "register_method"]

#: The statistics a method takes per model and parameter.
STATISTICS = ("fisher", "gram")


@dataclass(frozen=True)
class MergeMethod:
    """A merge method: its config class, its function on tensors and what it needs.

    Args:
        name: the registered name.
        title: a human-readable name.
        reference: the paper (arXiv or other URL).
        config_class: the dataclass of its parameters.
        function: ``fn(base, tensors, *, weights, config, key[, statistics]) -> Tensor``.
        uses_base: whether it works on task vectors θ_t − θ_0 (and so needs the base model).
        min_models: the fewest models it merges.
        max_models: the most models it merges (None: any number).
        statistic: "fisher" or "gram" when it takes one statistic tensor per model and parameter.
        randomized: whether its result depends on a seed.
        with_report: like ``function`` but also returning a per-parameter report (dict), or None.
        per_model: the config fields that may differ per model (``density`` for TIES, ...); the function then
            takes ``model_configs``, one config per model.
        optional_base: whether it uses a base model when one is given, without needing one (``nuslerp``: task
            vectors with a base, the models themselves without).
        base_first: whether a recipe's base model is the first of its models (``slerp``: the base is t = 0).
        takes_weights: whether it accepts per-model weights w_t.
    """

    name: str
    title: str
    reference: str
    config_class: type[Any]
    function: Callable[..., Tensor]
    uses_base: bool = True
    min_models: int = 1
    max_models: int | None = None
    statistic: str | None = None
    randomized: bool = False
    with_report: Callable[..., tuple[Tensor, dict[str, Any]]] | None = None
    per_model: tuple[str, ...] = ()
    optional_base: bool = False
    base_first: bool = False
    takes_weights: bool = True

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config_class):
            raise ConfigError(f"`config_class` of merge method {self.name!r} must be a dataclass")
        unknown = sorted(set(self.per_model) - set(self.parameters))
        if unknown:
            raise ConfigError(
                f"`per_model` of merge method {self.name!r} names {unknown[0]!r}, not a config field"
            )
        if self.statistic is not None and self.statistic not in STATISTICS:
            raise ConfigError(
                f"`statistic` must be one of {', '.join(STATISTICS)} or None, got {self.statistic!r}"
            )

    @property
    def parameters(self) -> list[str]:
        """The names of the method's parameters (its config fields)."""
        return [item.name for item in dataclasses.fields(self.config_class)]

    @property
    def list_parameters(self) -> list[str]:
        """The parameters whose value is a list (``exclude_keys``).

        In a recipe, a list given for one of them is the value itself, not a gradient over layers.
        """
        return [
            item.name
            for item in dataclasses.fields(self.config_class)
            if item.default_factory is list or str(item.type).startswith("list")
        ]

    def make_config(self, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
        """Build and validate the method's config from parameter values.

        Raises:
            ConfigError: for an unknown parameter (listing the allowed ones) or a bad value.
        """
        values = {**(params or {}), **kwargs}
        allowed = self.parameters
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            listed = ", ".join(allowed) or "none"
            raise ConfigError(
                f"unknown parameter {unknown[0]!r} for merge method {self.name!r}; allowed: {listed}"
            )
        return self.config_class(**values)

    def model_configs(self, config: Any, model_params: Sequence[Mapping[str, Any]] | None, count: int) -> Any:
        """One config per model from the shared ``config`` and each model's own parameters (or None).

        Raises:
            ConfigError: for a parameter that is not per model for this method, a bad value, or a wrong count.
        """
        if model_params is None:
            return None
        if isinstance(model_params, Mapping) or not isinstance(model_params, Sequence):
            raise TypeError(
                "`model_params` must be a sequence of mappings (one per model), got "
                f"{type(model_params).__name__}"
            )
        if len(model_params) != count:
            raise ConfigError(
                f"`model_params` must hold one mapping per model ({count}), got {len(model_params)}"
            )
        for index, params in enumerate(model_params):
            unknown = sorted(set(params) - set(self.per_model))
            if unknown:
                allowed = ", ".join(self.per_model) or "none"
                raise ConfigError(
                    f"parameter {unknown[0]!r} of model {index} is not per model for merge method "
                    f"{self.name!r}; per-model parameters: {allowed}"
                )
        if not self.per_model:
            return None
        return [dataclasses.replace(config, **params) for params in model_params]

    def check_inputs(self, *, has_base: bool, count: int, has_statistics: bool) -> None:
        """Check the number of models, the base model and the statistics against what the method needs.

        Raises:
            ConfigError: naming what is missing or superfluous.
        """
        if count < self.min_models or (self.max_models is not None and count > self.max_models):
            wanted = (
                f"exactly {self.min_models}"
                if self.max_models == self.min_models
                else f"at least {self.min_models}"
                if self.max_models is None
                else f"{self.min_models} to {self.max_models}"
            )
            raise ConfigError(f"merge method {self.name!r} merges {wanted} model(s), got {count}")
        if self.uses_base and not has_base:
            raise ConfigError(
                f"merge method {self.name!r} works on task vectors and needs a base model, got None"
            )
        if has_statistics and self.statistic is None:
            raise ConfigError(f"merge method {self.name!r} takes no `statistics`; only fisher and regmean do")

    def __call__(
        self,
        base: Tensor | None,
        tensors: Sequence[Tensor],
        *,
        weights: Sequence[float] | None = None,
        config: Any = None,
        key: str | None = None,
        statistics: Sequence[Tensor] | None = None,
        model_params: Sequence[Mapping[str, Any]] | None = None,
    ) -> Tensor:
        """Merge one parameter with a validated config (see :func:`~paperpack.r_tsvm.merge_tensors`)."""
        return self.merge_with_report(
            base,
            tensors,
            weights=weights,
            config=config,
            key=key,
            statistics=statistics,
            model_params=model_params,
        )[0]

    def merge_with_report(
        self,
        base: Tensor | None,
        tensors: Sequence[Tensor],
        *,
        weights: Sequence[float] | None = None,
        config: Any = None,
        key: str | None = None,
        statistics: Sequence[Tensor] | None = None,
        model_params: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Merge one parameter and return the method's report for it (empty for most methods).

        ``model_params`` holds one mapping per model of its own values for the fields in :attr:`per_model`.
        """
        if config is None:
            config = self.config_class()
        elif not isinstance(config, self.config_class):
            raise TypeError(
                f"`config` of merge method {self.name!r} must be a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.check_inputs(
            has_base=base is not None, count=len(tensors), has_statistics=statistics is not None
        )
        if weights is not None and not self.takes_weights:
            raise ConfigError(
                f"merge method {self.name!r} takes no per-model `weights`, got {list(weights)!r}"
            )
        kwargs: dict[str, Any] = {"weights": weights, "config": config, "key": key}
        if self.statistic is not None:
            kwargs["statistics"] = statistics
        model_configs = self.model_configs(config, model_params, len(tensors))
        if model_configs is not None:
            kwargs["model_configs"] = model_configs
        if self.with_report is not None:
            return self.with_report(base, tensors, **kwargs)
        return self.function(base, tensors, **kwargs), {}


_METHODS: Registry[MergeMethod] = Registry("merge method")


def register_method(method: MergeMethod, *, name: str | None = None) -> None:
    """Add a merge method to the registry (under ``name``, default ``method.name``; aliases use ``name``).

    Raises:
        ConfigError: for a malformed or taken name.

    Examples:
        >>> from paperpack.r_tsvm import get_method, list_methods
        >>> "ties" in list_methods() and get_method("ties").title
        'TIES'
    """
    _METHODS.register(name or method.name, method)


def get_method(name: str) -> MergeMethod:
    """The merge method registered under ``name``.

    Raises:
        ConfigError: for an unknown name, listing the available ones.
    """
    return _METHODS.get(name)


def list_methods() -> list[str]:
    """The names of the registered merge methods, sorted."""
    return _METHODS.names()


def _register_builtin() -> None:
    arxiv = "https://arxiv.org/abs/"
    for method in (
        MergeMethod(
            "linear",
            "Linear (model soup)",
            arxiv + "2203.05482",
            c.LinearConfig,
            m.linear_merge,
            uses_base=False,
        ),
        MergeMethod(
            "task_arithmetic",
            "Task arithmetic",
            arxiv + "2212.04089",
            c.TaskArithmeticConfig,
            m.task_arithmetic_merge,
        ),
        MergeMethod("ties", "TIES", arxiv + "2306.01708", c.TiesConfig, m.ties_merge, per_model=("density",)),
        MergeMethod(
            "dare_linear",
            "DARE + task arithmetic",
            arxiv + "2311.03099",
            c.DareConfig,
            m.dare_linear_merge,
            randomized=True,
            per_model=("density",),
        ),
        MergeMethod(
            "dare_ties",
            "DARE + TIES",
            arxiv + "2311.03099",
            c.DareTiesConfig,
            m.dare_ties_merge,
            randomized=True,
            per_model=("density",),
        ),
        MergeMethod(
            "breadcrumbs",
            "Model Breadcrumbs",
            arxiv + "2312.06795",
            c.BreadcrumbsConfig,
            m.breadcrumbs_merge,
            per_model=("density", "gamma"),
        ),
        MergeMethod(
            "breadcrumbs_ties",
            "Model Breadcrumbs + TIES",
            arxiv + "2312.06795",
            c.BreadcrumbsTiesConfig,
            m.breadcrumbs_ties_merge,
            per_model=("density", "gamma"),
        ),
        MergeMethod(
            "della",
            "DELLA",
            arxiv + "2406.11617",
            c.DellaConfig,
            m.della_merge,
            randomized=True,
            per_model=("density", "epsilon"),
        ),
        MergeMethod(
            "della_linear",
            "DELLA (linear)",
            arxiv + "2406.11617",
            c.DellaLinearConfig,
            m.della_linear_merge,
            randomized=True,
            per_model=("density", "epsilon"),
        ),
        MergeMethod(
            "consensus", "Consensus (TALL masks)", arxiv + "2405.07813", c.ConsensusConfig, m.consensus_merge
        ),
        MergeMethod("tsv_m", "TSV-M", arxiv + "2412.00081", c.TSVMConfig, m.tsv_m_merge),
        MergeMethod("iso_c", "Iso-C", arxiv + "2502.04959", c.IsoCConfig, m.iso_c_merge),
        MergeMethod("iso_cts", "Iso-CTS", arxiv + "2502.04959", c.IsoCTSConfig, m.iso_cts_merge),
        MergeMethod(
            "slerp",
            "SLERP",
            "https://en.wikipedia.org/wiki/Slerp",
            c.SlerpConfig,
            m.slerp_merge,
            uses_base=False,
            min_models=2,
            max_models=2,
            base_first=True,
            takes_weights=False,
        ),
        MergeMethod(
            "nuslerp",
            "NuSLERP",
            "https://github.com/arcee-ai/mergekit",
            c.NuSlerpConfig,
            m.nuslerp_merge,
            uses_base=False,
            min_models=2,
            max_models=2,
            optional_base=True,
        ),
        MergeMethod(
            "model_stock",
            "Model Stock",
            arxiv + "2403.19522",
            c.ModelStockConfig,
            m.model_stock_merge,
            min_models=2,
            takes_weights=False,
        ),
        MergeMethod("sce", "SCE", arxiv + "2408.07990", c.SCEConfig, m.sce_merge, takes_weights=False),
        MergeMethod(
            "passthrough",
            "Passthrough",
            "https://github.com/arcee-ai/mergekit",
            c.PassthroughConfig,
            m.passthrough_merge,
            uses_base=False,
            max_models=1,
            per_model=("scale",),
            takes_weights=False,
        ),
        MergeMethod(
            "fisher",
            "Fisher merging",
            arxiv + "2111.09832",
            c.FisherConfig,
            m.fisher_merge,
            uses_base=False,
            statistic="fisher",
        ),
        MergeMethod(
            "regmean",
            "RegMean",
            arxiv + "2212.09849",
            c.RegMeanConfig,
            m.regmean_merge,
            uses_base=False,
            statistic="gram",
        ),
    ):
        register_method(method)
    r_tsvm = MergeMethod(
        "r_tsvm",
        "R-TSVM (RESM)",
        arxiv + "2502.06876",
        c.RTSVMConfig,
        m.r_tsvm_merge,
        with_report=m.r_tsvm_merge_with_report,
    )
    register_method(r_tsvm)
    register_method(r_tsvm, name="resm")


_register_builtin()
