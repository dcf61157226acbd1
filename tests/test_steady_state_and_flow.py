"""Fixed point (steady state) and gradient flow (continuous time)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import rel_err

from ntkdyn import graphs
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.dynamics.steady_state import fixed_point
from ntkdyn.prediction import predict_from_kernels

GOLDEN = Path(__file__).parent / "data" / "nt_golden.npz"


def _data(n=24, d=5, seed=2, ridge=0.0, linear=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if linear:  # rank d < n: the agents' losses share no common minimiser
        kern = x @ x.T / d
    else:
        kern = x @ x.T / d + np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 4) + ridge * np.eye(n)
    return kern, np.eye(3)[rng.integers(0, 3, n)] - 1 / 3


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
def test_fixed_point_is_the_limit_of_the_iteration(algorithm):
    kern, y = _data(ridge=1.0)  # well conditioned: the iteration converges quickly
    q = 4
    agent = np.arange(len(y)) % q
    w = graphs.mixing(graphs.topology("ring", q))
    prob = make_problem(kern, y, agent, w)
    fp = fixed_point(prob, algorithm, 0.5)
    traj = predict_from_kernels(kern, y, agent, w, 0.5, [0, 3000], algorithm,
                                record_outputs=True)
    assert rel_err(traj.train_outputs[-1], fp.train_outputs) < 1e-9
    assert rel_err(traj.param_dist[-1], fp.param_dist) < 1e-9
    assert np.max(np.abs(traj.consensus_dist[-1] - fp.consensus_dist)) < 1e-9


def test_dgd_consensus_gap_is_order_eta_without_common_minimiser():
    kern, y = _data(linear=True)
    q = 4
    agent = np.arange(len(y)) % q
    w = graphs.mixing(graphs.topology("ring", q))
    prob = make_problem(kern, y, agent, w)
    gaps = [fixed_point(prob, "dgd", lr).consensus_gap for lr in (0.2, 0.1, 0.05)]
    assert gaps[0] > 1e-3
    # O(eta): halving the step roughly halves the gap
    for a, b in zip(gaps, gaps[1:], strict=False):
        assert 1.6 < a / b < 2.4
    traj = predict_from_kernels(kern, y, agent, w, 0.2, [0, 20000], "dgd")
    assert traj.consensus_dist[-1] == pytest.approx(
        fixed_point(prob, "dgd", 0.2).consensus_dist, rel=1e-6)


def test_dgd_fixed_point_is_consensual_when_the_kernel_interpolates():
    kern, y = _data(ridge=0.5)
    agent = np.arange(len(y)) % 4
    prob = make_problem(kern, y, agent, graphs.mixing(graphs.topology("ring", 4)))
    fp = fixed_point(prob, "dgd", 0.3)
    assert fp.consensus_gap < 1e-10 * fp.param_dist.max()
    assert fp.central_gap < 1e-10 * fp.param_dist.max()
    assert fp.central_train_loss < 1e-20


def test_flow_single_agent_matches_lee_et_al_closed_form():
    """Q = 1: f_t = f0 + (I - exp(-eta Theta t / N)) (Y - f0); test via Theta_* Theta^-1."""
    kern, y = _data(n=20, ridge=0.1)
    rng = np.random.default_rng(0)
    kt = rng.normal(size=(6, 20)) @ kern / 20
    f0, f0t = 0.1 * rng.normal(size=y.shape), 0.1 * rng.normal(size=(6, 3))
    yt = np.eye(3)[rng.integers(0, 3, 6)]
    eta, n = 0.7, 20
    times = np.array([0.0, 0.5, 3.0, 10.0, 50.0])
    traj = predict_from_kernels(kern, y, np.zeros(n, int), np.ones((1, 1)), eta, times,
                                f0_train=f0, kernel_test_train=kt, y_test=yt, f0_test=f0t,
                                continuous=True, record_outputs=True)
    lam, v = np.linalg.eigh(kern)
    for i, t in enumerate(times):
        decay = v @ np.diag(1 - np.exp(-eta * lam * t / n)) @ v.T
        ft = f0 + decay @ (y - f0)
        ftt = f0t + kt @ np.linalg.solve(kern, decay @ (y - f0))
        assert rel_err(traj.train_outputs[i, 0], ft) < 1e-10
        assert rel_err(traj.test_outputs[i, 0], ftt) < 1e-9


def test_flow_matches_neural_tangents_gradient_descent_mse():
    """Golden values from neural-tangents 0.6.5 predict.gradient_descent_mse.

    NT minimises 0.5 * sum/size, i.e. d f/dt = -(lr / y_train.size) K (f - y); ours is
    -(eta / N) K (f - y), hence eta = lr / K.
    """
    g = np.load(GOLDEN)
    y = g["gd_mse/y_train"]
    n, k = y.shape
    traj = predict_from_kernels(
        g["gd_mse/k_train_train"], y, np.zeros(n, int), np.ones((1, 1)),
        float(g["gd_mse/learning_rate"]) / k, g["gd_mse/t"], f0_train=g["gd_mse/fx_train_0"],
        kernel_test_train=g["gd_mse/k_test_train"], y_test=np.zeros_like(g["gd_mse/fx_test_0"]),
        f0_test=g["gd_mse/fx_test_0"], continuous=True, record_outputs=True)
    assert rel_err(traj.train_outputs[:, 0], g["gd_mse/fx_train_t"]) < 1e-8
    assert rel_err(traj.test_outputs[:, 0], g["gd_mse/fx_test_t"]) < 1e-8


def _euler_errors(kern, y, agent, w, eta, horizon, algorithm, make_discrete):
    flow = predict_from_kernels(kern, y, agent, w, eta, np.arange(0, horizon + 1, 5.0),
                                algorithm, continuous=True, record_outputs=True)
    errs = []
    for m in (4, 8, 16, 32):
        wm, lr, algo = make_discrete(m)
        disc = predict_from_kernels(kern, y, agent, wm, lr, np.arange(0, horizon * m + 1, 5 * m),
                                    algo, record_outputs=True)
        errs.append(np.max(np.abs(disc.train_outputs - flow.train_outputs)))
    return np.array(errs)


def test_dgd_flow_is_the_limit_of_small_steps():
    """DGD is the unit-step Euler discretisation of its flow: DGD with lazy mixing
    I + (W - I)/m and rate eta/m, run m times longer, converges at first order."""
    kern, y = _data()
    q = 4
    w = graphs.mixing(graphs.topology("ring", q))
    errs = _euler_errors(kern, y, np.arange(len(y)) % q, w, 0.5, 20, "dgd",
                         lambda m: (np.eye(q) + (w - np.eye(q)) / m, 0.5 / m, "dgd"))
    ratios = errs[:-1] / errs[1:]
    assert np.all((ratios > 1.7) & (ratios < 2.3)), ratios
    assert errs[-1] < 0.05


@pytest.mark.parametrize("base", ["atc", "cta"])
def test_flow_is_the_limit_of_relaxed_iterations(base):
    """Any schedule: x+ = x + (step(x) - x)/m is Euler on the flow with step 1/m.

    (ATC with lazy mixing and rate eta/m is *not* a discretisation of ATC's flow, whose
    generator is W(I - eta H) - I; the relaxed iteration is.)"""
    from ntkdyn.algorithms import Algorithm, get_algorithm

    kern, y = _data()
    q = 4
    w = graphs.mixing(graphs.topology("ring", q))
    step = get_algorithm(base).step

    def relaxed(m):
        def schedule(x, ops):
            return x + (step(x, ops) - x) / m
        return w, 0.5, Algorithm(f"relaxed-{base}-{m}", schedule)

    errs = _euler_errors(kern, y, np.arange(len(y)) % q, w, 0.5, 20, base, relaxed)
    ratios = errs[:-1] / errs[1:]
    assert np.all((ratios > 1.7) & (ratios < 2.3)), ratios


def test_flow_records_times_as_given():
    kern, y = _data()
    w = graphs.mixing(graphs.topology("ring", 4))
    traj = predict_from_kernels(kern, y, np.arange(len(y)) % 4, w, 0.3, [0.0, 0.25, 1.5],
                                continuous=True)
    np.testing.assert_array_equal(traj.steps, [0.0, 0.25, 1.5])
    assert traj.continuous
    json.dumps(traj.metadata)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
def test_interpolating_fixed_point_shortcut_equals_the_full_solve(algorithm):
    """Positive definite kernel: the consensual interpolant (one least-squares solve) is the
    fixed point the full Q R system gives, to 1e-9; per-agent rates and a random-gossip E[W]
    change nothing."""
    from ntkdyn.algorithms import get_algorithm
    from ntkdyn.dynamics import steady_state

    kern, y = _data(ridge=0.2)
    agent = np.arange(len(y)) % 4
    lr = np.array([0.3, 0.2, 0.25, 0.1])
    for mixing in (graphs.mixing(graphs.topology("ring", 4)),
                   graphs.random_edges(graphs.topology("ring", 4), p=0.5, seed=1)):
        prob = make_problem(kern, y, agent, mixing)
        fp = fixed_point(prob, algorithm, lr)
        vr, lam = steady_state._range_basis(prob.kernel)
        alpha = steady_state._solve_fixed_point(prob, get_algorithm(algorithm),
                                                lr, vr, lam)
        out = np.einsum("ij,qjk->qik", prob.kernel, alpha) + prob.f0_train[None]
        assert rel_err(fp.train_outputs, out[:, np.argsort(prob.order)]) < 1e-9
        assert fp.consensus_gap == 0.0


def test_fixed_point_without_common_minimiser_takes_the_full_solve():
    kern, y = _data(linear=True)  # rank 5 < 24 rows: no interpolant
    prob = make_problem(kern, y, np.arange(len(y)) % 4, graphs.mixing(graphs.topology("ring", 4)))
    assert fixed_point(prob, "dgd", 0.1).consensus_gap > 1e-3


@pytest.mark.parametrize("linear", [True, False])
def test_tracking_and_momentum_fixed_points_without_the_full_solve(linear, monkeypatch):
    """Gradient tracking, NEXT, DIGing (any positive rates) and EXTRA (equal rates) on a
    doubly stochastic W (static or E[W]) sit at the consensual centralised solution, with
    or without an interpolant (theory/fixed_point.md section 4a): the shortcut equals the
    full 2-3 Q R system to 1e-9 and solves none.  EXTRA with per-agent rates is not
    centralised and takes the system.  Momentum has its base's fixed point and solves the
    base's (Q R) system, equal to the 2 Q R one to 1e-9."""
    from ntkdyn import algorithms
    from ntkdyn.dynamics import steady_state

    kern, y = _data(linear=linear, ridge=0.2)
    agent = np.arange(len(y)) % 4
    equal, per_agent = 0.2, np.array([0.3, 0.2, 0.25, 0.1])
    full = steady_state._solve_fixed_point

    def solve(prob, algo, lr):
        vr, lam = steady_state._range_basis(prob.kernel)
        alpha = full(prob, algo, steady_state.learning_rates(lr, 4), vr, lam)
        out = np.einsum("ij,qjk->qik", prob.kernel, alpha) + prob.f0_train[None]
        return out[:, np.argsort(prob.order)]

    calls = []
    monkeypatch.setattr(steady_state, "_solve_fixed_point",
                        lambda prob, algo, *a: calls.append(algo.name) or full(prob, algo, *a))
    for mixing in (graphs.mixing(graphs.topology("ring", 4)),
                   graphs.random_edges(graphs.topology("ring", 4), p=0.5, seed=1)):
        prob = make_problem(kern, y, agent, mixing)
        for algo in (algorithms.GRADIENT_TRACKING, algorithms.NEXT, algorithms.DIGING,
                     algorithms.EXTRA):
            for lr in (equal, per_agent):
                fp = fixed_point(prob, algo, lr)
                if algo is algorithms.EXTRA and lr is per_agent:
                    # consensual, at sum_q lr_q grad L_q = 0: not the centralised solution
                    assert calls.pop() == "extra" and fp.consensus_gap < 1e-9
                    assert fp.central_gap > 1e-3 or not linear
                    continue
                assert not calls, (algo.name, calls)
                assert fp.consensus_gap == 0.0
                assert rel_err(fp.train_outputs, solve(prob, algo, lr)) < 1e-9, algo.name
        mom = algorithms.momentum(0.5)
        fp = fixed_point(prob, mom, per_agent)
        # the base's system without an interpolant; with one, DGD's own shortcut
        assert calls == (["dgd"] if linear else [])
        assert rel_err(fp.train_outputs, solve(prob, mom, per_agent)) < 1e-9
        assert rel_err(fp.train_outputs, fixed_point(prob, "dgd", per_agent).train_outputs) \
            < 1e-12
        calls.clear()


def test_public_fixed_point_says_whether_the_rate_reaches_it():
    """``nd.fixed_point`` at an unstable rate returned the affine iteration's fixed point
    unflagged (found-not-fixed 2 of stop 51): now ``stable`` / ``stable_set`` and a warning."""
    import ntkdyn as nd

    kern, y = _data(ridge=1.0)
    prob = make_problem(kern, y, np.arange(24) % 4, graphs.mixing(graphs.topology("ring", 4)))
    lr_star = nd.stability(prob, "dgd", 0.1).lr_star
    inside = nd.fixed_point(prob, "dgd", 0.5 * lr_star)
    assert inside.stable is True and "lr*=" in inside.stable_set
    with pytest.warns(UserWarning, match=r"diverge at lr=.*does not reach this fixed point"):
        outside = nd.fixed_point(prob, "dgd", 1.2 * lr_star)
    assert outside.stable is False and "not reached" in repr(outside)
    raw = fixed_point(prob, "dgd", 1.2 * lr_star)  # the same point, only flagged
    np.testing.assert_array_equal(outside.train_outputs, raw.train_outputs)
    assert nd.fixed_point(prob, "dgd", 1.2 * lr_star, verify=False).stable is None
    # momentum's own beta decides (issue 16, case 3: stable set about [1.9, 6.62])
    w3 = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    p3 = make_problem(np.eye(6), np.ones((6, 1)), np.arange(6) % 3, w3)
    mom = nd.algorithms.momentum(0.9)
    assert nd.fixed_point(p3, mom, 3.0).stable is True
    with pytest.warns(UserWarning):
        assert nd.fixed_point(p3, mom, 0.5).stable is False


def test_fixed_point_with_a_periodic_sequence_names_the_problem():
    """A periodic mixing sequence ends on a periodic orbit: the error names ``problem`` (its
    mixing), not ``algorithm``, which was blamed before; random gossip has one (E[W])."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4))
    kern, y, agent = x @ x.T / 4 + 0.1 * np.eye(12), rng.normal(size=(12, 1)), np.arange(12) % 3
    ring = graphs.topology("ring", 3)
    periodic = graphs.periodic([graphs.mixing(ring), np.full((3, 3), 1 / 3)])
    with pytest.raises(ValueError, match="^problem: its mixing is a periodic sequence"):
        fixed_point(make_problem(kern, y, agent, periodic), "dgd", 0.1)
    gossip = graphs.random_edges(ring, 0.5, seed=0)
    assert fixed_point(make_problem(kern, y, agent, gossip), "dgd", 0.1).consensus_gap >= 0
