"""The tracking-simulation configuration behind ``paperpack ma-osma simulate`` and the demo.

The paper's testbed (20 agents, 30 targets, T = 1250, complete and Erdős-Rényi graphs of average degree 4)
sets the defaults marked "paper"; the paper gives no step sizes, arena, speeds or kernel: those are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int, check_literal_fields, check_positive, check_range
from paperpack.ma_osma.tracking import Motion

__all__ = ["ALGORITHMS", "AlgorithmConfig", "AlgorithmName", "SimulationConfig"]

AlgorithmName = Literal["ma-osma", "ma-osea", "osg", "osg-neighbours"]
#: The name each algorithm has in results and tables.
ALGORITHMS: dict[str, str] = dict(
    zip(get_args(AlgorithmName), ("MA-OSMA", "MA-OSEA", "OSG", "OSG (neighbours)"), strict=True)
)


@dataclass
class AlgorithmConfig:
    """The step sizes and estimator of MA-OSMA and MA-OSEA: the one place their defaults live.

    Examples:
        >>> AlgorithmConfig().eta
        300.0
        >>> AlgorithmConfig(mix=0.0)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `mix` must be in (0, 1], got 0.0
    """

    eta: float = field(
        default=300.0,
        metadata={"help": "MA-OSMA step size η (paper: constant, value not given). Default ours (sweep)."},
    )
    eta_osea: float = field(
        default=300.0,
        metadata={"help": "MA-OSEA step size η (paper: value not given). Default ours (sweep)."},
    )
    mix: float = field(
        default=0.01,
        metadata={
            "help": "MA-OSEA uniform mixing weight γ in (0, 1] (paper: value not given). Default ours."
        },
    )
    curvature: float = field(
        default=1.0,
        metadata={
            "help": "Curvature c in (0, 1] of the surrogate weight e^{c(z-1)}; 1 gives 1-1/e. Default ours."
        },
    )
    n_samples: int = field(
        default=1,
        metadata={"help": "Gradient samples per agent and round (paper: 1, i.e. 2|V_i| oracle calls)."},
    )

    def __post_init__(self) -> None:
        check_positive("eta", self.eta)
        check_positive("eta_osea", self.eta_osea)
        check_range("mix", self.mix, 0.0, 1.0, low_inclusive=False)
        check_range("curvature", self.curvature, 0.0, 1.0, low_inclusive=False)
        check_int("n_samples", self.n_samples, minimum=1)


@dataclass
class SimulationConfig(AlgorithmConfig):
    """One multi-target tracking comparison: the testbed, and the algorithms' settings it inherits.

    Every field is validated at construction; the config parses with ``transformers.HfArgumentParser``.

    Examples:
        >>> SimulationConfig(agents=10, targets=15, rounds=300).graph
        'er:4'
        >>> SimulationConfig(eta=0.0)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `eta` must be > 0, got 0.0
    """

    agents: int = field(default=20, metadata={"help": "Number of agents N (paper: 20)."})
    targets: int = field(default=30, metadata={"help": "Number of targets M (paper: 30)."})
    rounds: int = field(default=1250, metadata={"help": "Horizon T (paper: 1250)."})
    graph: str = field(
        default="er:4",
        metadata={
            "help": "Communication graph: complete, ring, path, star or er:D (connected Erdős-Rényi, average "
            "degree D). Paper: complete and er:4."
        },
    )
    seeds: int = field(default=5, metadata={"help": "Number of seeds (paper: 5 repeats)."})
    seed: int = field(
        default=0, metadata={"help": "First seed; the runs use seed, seed+1, ... Default ours."}
    )
    motion: Motion = field(
        default="mixed",
        metadata={"help": "Target motion. Default ours (paper: mixes of the three)."},
    )
    # list[str], not list[AlgorithmName]: transformers' HfArgumentParser reads no list of Literal.
    algorithms: list[str] = field(
        default_factory=lambda: list(get_args(AlgorithmName)),
        metadata={"help": f"Algorithms to run, from {', '.join(get_args(AlgorithmName))}."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("agents", self.agents, minimum=1)
        check_int("targets", self.targets, minimum=1)
        check_int("rounds", self.rounds, minimum=1)
        check_int("seeds", self.seeds, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_literal_fields(self)
        if not self.algorithms:
            raise ConfigError(f"`algorithms` must name at least one of {', '.join(ALGORITHMS)}, got none")
        for name in self.algorithms:
            if name not in ALGORITHMS:
                raise ConfigError(f"`algorithms` must hold names from {', '.join(ALGORITHMS)}, got {name!r}")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ConfigError(f"`algorithms` must not repeat a name, got {self.algorithms}")
