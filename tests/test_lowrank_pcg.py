"""Two-level preconditioned conjugate gradients (ntkdyn.lowrank.pcg): the consensus
directions of a symmetric or a symmetrised reversible mixing matrix."""

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn.lowrank import pcg


def _dense_m(w, blocks):
    q, r = blocks.shape[:2]
    diag = np.zeros((q * r, q * r))
    for i in range(q):
        diag[i * r:(i + 1) * r, i * r:(i + 1) * r] = blocks[i]
    return np.kron(np.eye(q) - w, np.eye(r)) + diag


def test_consensus_vector_is_sqrt_pi_for_a_symmetrised_reversible_mixing():
    """``1 / sqrt(Q)`` for a doubly stochastic W (exactly); ``sqrt(pi)`` for the
    symmetrised uniform rule, with ``pi`` W's stationary distribution (1e-12); a
    symmetric matrix whose largest eigenvalue is not 1 is a ValueError naming mixing."""
    ring = nd.graphs.mixing(nd.graphs.topology("ring", 6))
    assert np.array_equal(pcg.consensus_vector(ring), np.full(6, 1 / np.sqrt(6)))
    w = nd.graphs.mixing(nd.graphs.topology("star", 5), rule="uniform")
    z = pcg.consensus_vector(nd.graphs.symmetrised(w))
    pi = z ** 2
    assert abs(pi.sum() - 1) <= 1e-12 and np.max(np.abs(pi @ w - pi)) <= 1e-12
    with pytest.raises(ValueError, match="^mixing: expected a symmetric matrix"):
        pcg.consensus_vector(0.9 * ring)


def test_coarse_space_of_a_reversible_mixing_keeps_the_iterations_few(monkeypatch):
    """M = (I - S) (x) I + blockdiag(S_q) with S the symmetrised uniform rule on an
    Erdos-Renyi graph of 30 agents and small curvature (the slow consensus directions):
    the solve equals the dense one to 1e-10, in 39 iterations; with the doubly stochastic
    coarse vector 1 / sqrt(Q) in place of sqrt(pi) (what the preconditioner used before)
    the same solve takes 92 (measured), asserted: at least 1.5x more."""
    rng = np.random.default_rng(0)
    q, r = 30, 5
    w = nd.graphs.mixing(nd.graphs.topology("erdos_renyi", q, p=0.15, seed=1), rule="uniform")
    sym = nd.graphs.symmetrised(w)
    assert not nd.graphs.is_symmetric(w) and sym is not None
    a = rng.normal(size=(q, r, r))
    blocks = 1e-4 * a @ np.swapaxes(a, 1, 2)
    b = rng.normal(size=(q, r, 2))
    ref = np.linalg.solve(_dense_m(sym, blocks), b.reshape(q * r, 2)).reshape(q, r, 2)
    solver = pcg.TwoLevelPCG(sym, blocks)
    x = solver.solve(b)
    assert np.max(np.abs(x - ref)) <= 1e-10 * np.max(np.abs(ref))
    fast = solver.iterations
    monkeypatch.setattr(pcg, "consensus_vector", lambda m: np.full(m.shape[0], q ** -0.5))
    slow = pcg.TwoLevelPCG(sym, blocks)
    assert np.max(np.abs(slow.solve(b) - ref)) <= 1e-10 * np.max(np.abs(ref))
    assert slow.iterations >= 1.5 * fast, (fast, slow.iterations)
