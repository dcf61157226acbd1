"""Exact stability boundary, sufficient bounds and the ring-of-4 example."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkdyn import graphs
from ntkdyn import spectrum as stab
from ntkdyn.predict import predict_from_kernels
from ntkdyn.problem import make_problem


def _kernel(n=32, d=5, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    return scale * (x @ x.T / d + 0.5 * np.exp(-sq / 4)), np.eye(3)[rng.integers(0, 3, n)]


def _problem(topology="ring", q=4, n=32, seed=1, rule="metropolis"):
    kern, y = _kernel(n=n, seed=seed)
    w = graphs.mixing(graphs.topology(topology, q), rule)
    return make_problem(kern, y, np.arange(n) % q, w), kern, y, w


def _growth(kern, y, agent, w, lr, algorithm, steps=4000):
    traj = predict_from_kernels(kern, y, agent, w, lr, [0, steps // 2, steps],
                                algorithm=algorithm)
    if traj.diverged:
        return np.inf
    return traj.train_loss[-1].max() / traj.train_loss[0].max()


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
@pytest.mark.parametrize("topology", ["ring", "star"])
def test_lr_star_separates_converging_from_diverging(algorithm, topology):
    prob, kern, y, w = _problem(topology)
    lr_star, _ = stab.max_stable_lr(prob, algorithm)
    agent = np.arange(len(y)) % 4
    assert _growth(kern, y, agent, w, 0.98 * lr_star, algorithm) < 1.0  # bounded, decreasing
    assert _growth(kern, y, agent, w, 1.02 * lr_star, algorithm) > 1e3  # grows
    assert stab.spectral_radius(prob, algorithm, 0.98 * lr_star) < 1.0
    assert stab.spectral_radius(prob, algorithm, 1.02 * lr_star) > 1.0
    assert stab.sufficient_bound(prob, algorithm) <= lr_star * (1 + 1e-9)


def test_dgd_generalized_eigenvalue_equals_brute_force_spectral_radius():
    prob, *_ = _problem()
    fast, method = stab.max_stable_lr(prob, "dgd")
    assert method == "minus-one-crossing (exact)"
    heterogeneous, method2 = stab.max_stable_lr(prob, "dgd", profile=np.ones(4) * 0.5)
    assert method2 == "minus-one-crossing (exact)"
    # brute force: spectral radius of the dense operator crosses 1 at fast
    assert stab.spectral_radius(prob, "dgd", fast * (1 - 1e-7), method="dense") <= 1 + 1e-9
    assert stab.spectral_radius(prob, "dgd", fast * (1 + 1e-6), method="dense") > 1 + 1e-9
    assert heterogeneous == pytest.approx(fast, rel=1e-12)


def test_ring_of_four_dgd_diverges_where_atc_and_cta_converge():
    """DESIGN.md: ring of 4, Metropolis (lambda_min = -1/3), eta = 0.5."""
    kern, y = _kernel()
    w = graphs.mixing(graphs.topology("ring", 4), "metropolis")
    assert graphs.lambda_min(w) == pytest.approx(-1 / 3)
    agent = np.arange(len(y)) % 4
    prob = make_problem(kern, y, agent, w)
    # scale the kernel so that DGD's exact boundary sits at 0.4
    c = stab.max_stable_lr(prob, "dgd")[0] / 0.4
    prob = make_problem(kern * c, y, agent, w)
    reports = {a: stab.stability(prob, a, 0.5) for a in ("dgd", "atc", "cta")}
    assert not reports["dgd"].stable and reports["dgd"].margin < 0
    assert reports["atc"].stable and reports["cta"].stable
    assert _growth(kern * c, y, agent, w, 0.5, "dgd") == np.inf
    assert _growth(kern * c, y, agent, w, 0.5, "atc") < 1
    assert _growth(kern * c, y, agent, w, 0.5, "cta") < 1
    assert "diverge" in reports["dgd"].describe()


def test_per_agent_rates_stability_matches_iteration():
    prob, kern, y, w = _problem()
    profile = np.array([1.0, 0.5, 0.8, 0.3])
    lr_star, method = stab.max_stable_lr(prob, "dgd", profile=profile)
    assert method in ("minus-one-crossing (verified)", "brent-dense")
    agent = np.arange(len(y)) % 4
    assert _growth(kern, y, agent, w, 0.98 * lr_star * profile, "dgd") < 1
    assert _growth(kern, y, agent, w, 1.02 * lr_star * profile, "dgd") > 1e3


@st.composite
def doubly_stochastic(draw):
    """Random symmetric doubly stochastic W: Metropolis weights on a random connected graph."""
    q = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 10_000))
    p = draw(st.floats(0.3, 1.0))
    g = graphs.topology("erdos_renyi", q, p=p, seed=seed)
    lazy = draw(st.booleans())
    return graphs.mixing(g, draw(st.sampled_from(["metropolis", "max_degree"])), lazy=lazy)


@settings(max_examples=15, deadline=None)
@given(w=doubly_stochastic(), algorithm=st.sampled_from(["dgd", "atc", "cta"]))
def test_sufficient_bound_never_exceeds_exact(w, algorithm):
    q = w.shape[0]
    kern, y = _kernel(n=4 * q, seed=q)
    prob = make_problem(kern, y, np.arange(4 * q) % q, w)
    exact, _ = stab.max_stable_lr(prob, algorithm)
    bound = stab.sufficient_bound(prob, algorithm)
    assert bound <= exact * (1 + 1e-8)
    assert stab.spectral_radius(prob, algorithm, 0.999 * exact) <= 1 + 1e-8


def test_arpack_path_agrees_with_dense():
    prob, *_ = _problem(n=48)
    s = 0.9 * stab.max_stable_lr(prob, "atc")[0]
    dense = stab.spectral_radius(prob, "atc", s, method="dense")
    arpack = stab.spectral_radius(prob, "atc", s, method="arpack")
    assert arpack == pytest.approx(dense, rel=1e-8)


def test_complex_pair_leaving_the_disc_is_bracketed():
    """Indefinite W: no -1 crossing for ATC; a complex pair leaves the unit disc at 4.5."""
    w = np.array([[0.1, 0.9], [0.9, 0.1]])
    prob = make_problem(np.eye(4), np.eye(2)[[0, 1, 0, 1]], np.array([0, 0, 1, 1]), w)
    for algorithm in ("atc", "cta"):
        lr_star, method = stab.max_stable_lr(prob, algorithm)
        assert method == "brent-dense"
        assert lr_star == pytest.approx(4.5, rel=1e-8)
        eig = np.linalg.eigvals(stab.dense_operator(prob, algorithm, 1.01 * lr_star))
        leaving = eig[np.abs(eig) > 1]
        assert leaving.size and np.all(np.abs(leaving.imag) > 0.1)  # complex, not -1
