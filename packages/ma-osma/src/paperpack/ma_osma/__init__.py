"""MA-OSMA / MA-OSEA: multi-agent online submodular maximization (ICLR 2025, arXiv:2502.05028)."""

from paperpack.ma_osma.config import AlgorithmConfig, SimulationConfig
from paperpack.ma_osma.consensus import adjacency_matrix, consensus_matrix, make_graph, mixing_modulus
from paperpack.ma_osma.experiment import (
    AlgorithmFactory,
    ExperimentResults,
    ExperimentSetup,
    OnlineAlgorithm,
    default_algorithms,
    run_experiment,
)
from paperpack.ma_osma.gradient import boosted_gradient, sample_z
from paperpack.ma_osma.greedy import offline_greedy
from paperpack.ma_osma.maosma import MAOSEA, MAOSMA, NoMixingWarning
from paperpack.ma_osma.objectives import (
    CountingObjective,
    FacilityLocation,
    SubmodularObjective,
    TrackingObjective,
    WeightedCoverage,
)
from paperpack.ma_osma.osg import OSG
from paperpack.ma_osma.plotting import plot_results
from paperpack.ma_osma.projection import project_solid_simplex
from paperpack.ma_osma.tracking import TrackingEnv, TrackingStep

__all__ = [
    "MAOSEA",
    "MAOSMA",
    "OSG",
    "AlgorithmConfig",
    "AlgorithmFactory",
    "CountingObjective",
    "ExperimentResults",
    "ExperimentSetup",
    "FacilityLocation",
    "NoMixingWarning",
    "OnlineAlgorithm",
    "SimulationConfig",
    "SubmodularObjective",
    "TrackingEnv",
    "TrackingObjective",
    "TrackingStep",
    "WeightedCoverage",
    "adjacency_matrix",
    "boosted_gradient",
    "consensus_matrix",
    "default_algorithms",
    "make_graph",
    "mixing_modulus",
    "offline_greedy",
    "plot_results",
    "project_solid_simplex",
    "run_experiment",
    "sample_z",
]
