"""Communication topologies, mixing matrices and mixing sequences: the public face.

The graphs and their mixing matrices are built in :mod:`ntkdyn.graphs.topology`
(:func:`topology`, :func:`mixing`, spectral quantities); the sequences of mixing
matrices (periodic schedules, random gossip) in :mod:`ntkdyn.graphs.sequences`, which builds
on them.  This module re-exports both (``nd.graphs.topology``, ``nd.graphs.mixing``,
``nd.graphs.random_edges``, ...); inside ntkdyn, import from the defining module
(``gossip`` imports ``topologies``, never ``graphs``: no cycle).
"""

from __future__ import annotations

from ntkdyn.graphs.sequences import one_random_edge, periodic, random_edges
from ntkdyn.graphs.topology import (
    MIXING_RULES,
    TOPOLOGIES,
    TOPOLOGY_PARAMS,
    as_graph,
    check_mixing,
    eigenvalues,
    is_doubly_stochastic,
    is_symmetric,
    lambda_min,
    load_adjacency,
    load_mixing,
    mixing,
    spectral_gap,
    symmetrised,
    topology,
)

__all__ = [
    "MIXING_RULES", "TOPOLOGIES", "TOPOLOGY_PARAMS", "as_graph", "check_mixing", "eigenvalues",
    "is_doubly_stochastic", "is_symmetric", "lambda_min", "load_adjacency", "load_mixing",
    "mixing", "one_random_edge", "periodic", "random_edges", "spectral_gap", "symmetrised",
    "topology",
]
