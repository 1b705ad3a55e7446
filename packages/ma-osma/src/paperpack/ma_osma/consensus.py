"""Communication graphs and the doubly stochastic consensus matrix ``W``.

MA-OSMA / MA-OSEA average every agent's copy of the fractional decision with its neighbours' copies through
``W``; their regret scales with ``1 / (1 - β)`` where ``β = max(|λ_2(W)|, |λ_N(W)|)`` is the second-largest
eigenvalue modulus (the paper calls ``1 - β`` the spectral gap). The paper does not fix how ``W`` is built; we
use Metropolis-Hastings weights, which need only local degrees:

    ``w_ij = 1 / (1 + max(d_i, d_j))`` for each edge ``(i, j)``,  ``w_ii = 1 - Σ_{j≠i} w_ij``,  else 0.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike, NDArray

from paperpack.core.errors import ConfigError
from paperpack.core.validation import check_int

__all__ = ["adjacency_matrix", "consensus_matrix", "make_graph", "mixing_modulus"]

GRAPH_KINDS = ("complete", "er", "ring", "path", "star")


def adjacency_matrix(graph: nx.Graph | ArrayLike) -> NDArray[np.bool_]:
    """Symmetric boolean adjacency (no self-loops) of a ``networkx.Graph`` or a square array.

    For a graph, agent ``i`` is the ``i``-th node of ``list(graph.nodes)`` (``0..N-1`` for the networkx
    generators).

    Raises:
        ConfigError: for a non-square, non-symmetric, negative or empty adjacency array, or a directed graph.
    """
    if isinstance(graph, nx.Graph):
        if graph.is_directed():
            raise ConfigError("`graph` must be undirected, got a directed networkx graph")
        if graph.number_of_nodes() == 0:
            raise ConfigError("`graph` must have at least one node, got an empty graph")
        array: NDArray[np.float64] = np.asarray(
            nx.to_numpy_array(graph, nodelist=list(graph.nodes), weight=None), dtype=np.float64
        )
    else:
        array = np.asarray(graph, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ConfigError(f"`graph` adjacency must be a non-empty square array, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ConfigError("`graph` adjacency must have finite non-negative entries")
    if not np.array_equal(array != 0, (array != 0).T):
        raise ConfigError("`graph` adjacency must be symmetric (an undirected graph)")
    adjacency: NDArray[np.bool_] = array != 0
    np.fill_diagonal(adjacency, False)
    return adjacency


def _is_connected(adjacency: NDArray[np.bool_]) -> bool:
    seen = np.zeros(adjacency.shape[0], dtype=bool)
    frontier = np.zeros_like(seen)
    frontier[0] = True
    while frontier.any():
        seen |= frontier
        frontier = adjacency[frontier].any(axis=0) & ~seen
    return bool(seen.all())


def consensus_matrix(graph: nx.Graph | ArrayLike) -> tuple[NDArray[np.float64], float]:
    """Metropolis-Hastings consensus weights ``W`` and their second-largest eigenvalue modulus ``β``.

    Args:
        graph: an undirected ``networkx.Graph`` or a symmetric adjacency array (non-zero = edge; the
            diagonal is ignored).

    Returns:
        ``(W, beta)``: ``W`` is symmetric, doubly stochastic, ``w_ij > 0`` only on edges and the diagonal;
        ``beta < 1`` because the graph is connected (``beta = 0`` for one agent).

    Raises:
        ConfigError: when the graph is disconnected or the adjacency is malformed.

    Examples:
        >>> import networkx as nx
        >>> W, beta = consensus_matrix(nx.complete_graph(4))
        >>> W[0].tolist(), round(beta, 12)
        ([0.25, 0.25, 0.25, 0.25], 0.0)
    """
    adjacency = adjacency_matrix(graph)
    if not _is_connected(adjacency):
        raise ConfigError(
            "`graph` must be connected: MA-OSMA's consensus needs a path between every pair of agents "
            f"(got {adjacency.shape[0]} nodes in more than one component)"
        )
    degree = adjacency.sum(axis=1)
    W = np.where(adjacency, 1.0 / (1.0 + np.maximum(degree[:, None], degree[None, :])), 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W, mixing_modulus(W)


def mixing_modulus(W: ArrayLike) -> float:
    """``β = max(|λ_2(W)|, |λ_N(W)|)`` of a symmetric ``W``: how slowly the consensus ``X ← W X`` mixes.

    ``β < 1`` for the Metropolis-Hastings weights of a connected graph; ``β = 1`` when ``W`` does not mix
    (``W = I``, a disconnected graph, or a periodic one such as a bipartite swap); ``β = 0`` for one agent.

    Examples:
        >>> import numpy as np
        >>> mixing_modulus(np.full((3, 3), 1 / 3)) < 1e-12, mixing_modulus(np.eye(3))
        (True, 1.0)
    """
    matrix = np.asarray(W, dtype=np.float64)
    if matrix.shape[0] == 1:
        return 0.0
    eigenvalues = np.sort(np.linalg.eigvalsh(matrix))[::-1]
    return float(np.max(np.abs(eigenvalues[1:])))


def make_graph(spec: str, n_agents: int, *, seed: int = 0, max_tries: int = 1000) -> nx.Graph:
    """A communication graph from a short spec.

    Specs: ``complete``, ``ring``, ``path``, ``star``, or ``er:D`` for an Erdős-Rényi graph with average
    degree ``D`` (edge probability ``D / (N - 1)``), redrawn (seeded) until connected, as the paper's
    experiments use connected random graphs.

    Raises:
        ConfigError: for an unknown spec, a bad degree, or when no connected ER graph was drawn in
            ``max_tries`` attempts.

    Examples:
        >>> make_graph("er:4", 20, seed=0).number_of_nodes()
        20
    """
    check_int("n_agents", n_agents, minimum=1)
    kind, _, argument = spec.partition(":")
    if kind not in GRAPH_KINDS or (kind != "er") != (argument == ""):
        raise ConfigError(
            f"`graph` must be one of complete, ring, path, star, er:<average degree>; got {spec!r}"
        )
    if kind == "complete":
        return nx.complete_graph(n_agents)
    if kind == "ring":
        return nx.cycle_graph(n_agents)
    if kind == "path":
        return nx.path_graph(n_agents)
    if kind == "star":
        return nx.star_graph(n_agents - 1)
    try:
        degree = float(argument)
    except ValueError:
        raise ConfigError(f"`graph` er:<average degree> needs a number, got {spec!r}") from None
    if n_agents == 1:
        return nx.complete_graph(1)
    if not 0 < degree <= n_agents - 1:
        raise ConfigError(f"`graph` er average degree must be in (0, {n_agents - 1}], got {degree:g}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        candidate: nx.Graph = nx.gnp_random_graph(
            n_agents, degree / (n_agents - 1), seed=int(rng.integers(2**31))
        )
        if nx.is_connected(candidate):
            return candidate
    raise ConfigError(
        f"no connected Erdős-Rényi graph with {n_agents} nodes and average degree {degree:g} in {max_tries} "
        "draws; raise the degree"
    )
