"""The tracking-simulation configuration behind ``paperpack ma-osma simulate`` and the demo.

The paper's testbed (20 agents, 30 targets, T = 1250, complete and Erdős-Rényi graphs of average degree 4)
sets the defaults marked "paper"; the paper gives no step sizes, arena, speeds or kernel: those are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_choice, check_int, check_positive, check_range
from paperpack.ma_osma.tracking import MOTIONS

__all__ = ["ALGORITHMS", "SimulationConfig"]

ALGORITHMS = {
    "ma-osma": "MA-OSMA",
    "ma-osea": "MA-OSEA",
    "osg": "OSG",
    "osg-neighbours": "OSG (neighbours)",
}


@dataclass
class SimulationConfig:
    """One multi-target tracking comparison.

    Every field is validated at construction; the config parses with ``transformers.HfArgumentParser``.

    Example:
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
    motion: str = field(
        default="mixed",
        metadata={"help": f"Target motion: {', '.join(MOTIONS)}. Default ours (paper: mixes of the three)."},
    )
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
    algorithms: list[str] = field(
        default_factory=lambda: list(ALGORITHMS),
        metadata={"help": f"Algorithms to run, from {', '.join(ALGORITHMS)}."},
    )

    def __post_init__(self) -> None:
        check_int("agents", self.agents, minimum=1)
        check_int("targets", self.targets, minimum=1)
        check_int("rounds", self.rounds, minimum=1)
        check_int("seeds", self.seeds, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_choice("motion", self.motion, MOTIONS)
        check_positive("eta", self.eta)
        check_positive("eta_osea", self.eta_osea)
        check_range("mix", self.mix, 0.0, 1.0, low_inclusive=False)
        check_range("curvature", self.curvature, 0.0, 1.0, low_inclusive=False)
        check_int("n_samples", self.n_samples, minimum=1)
        if not self.algorithms:
            raise ConfigError(f"`algorithms` must name at least one of {', '.join(ALGORITHMS)}, got none")
        for name in self.algorithms:
            check_choice("algorithms", name, list(ALGORITHMS))
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ConfigError(f"`algorithms` must not repeat a name, got {self.algorithms}")
