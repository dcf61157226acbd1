"""The structured (shift-invert, Woodbury) spectral radius of DGD/ATC/CTA against the dense
spectrum (ntkdyn.dynamics.radius): equal to <= 1e-8 where it applies, ``None`` (and the
ARPACK fall-back equal to the dense radius) where it does not."""

import numpy as np
import pytest

from ntkdyn import algorithms, graphs
from ntkdyn.dynamics import radius
from ntkdyn.dynamics import stability as stab
from ntkdyn.dynamics.problem import make_problem

TOL = 1e-8


def _kernel(n, d=5, seed=1, rank=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    if rank is not None:  # singular kernel: eigenvalues exactly 1 on its null space
        f = rng.normal(size=(n, rank))
        return f @ f.T / rank, np.eye(3)[rng.integers(0, 3, n)]
    return x @ x.T / d + 0.5 * np.exp(-sq / 4), np.eye(3)[rng.integers(0, 3, n)]


def _problem(w, n=36, seed=1, agent=None, rank=None):
    kern, y = _kernel(n, seed=seed, rank=rank)
    q = w.num_agents if hasattr(w, "num_agents") else w.shape[0]
    agent = np.arange(n) % q if agent is None else agent
    return make_problem(kern, y, agent, w)


def _dense_radius(op, s):
    return float(np.max(np.abs(np.linalg.eigvals(op.dense(s)))))


def _scales(problem):
    curv = float(np.max(stab.agent_curvatures(problem)))
    return [f / curv for f in (0.05, 0.3, 0.9, 1.3, 1.9, 2.6)]


MIXINGS = {
    "ring": graphs.mixing(graphs.topology("ring", 4), "metropolis"),
    "star": graphs.mixing(graphs.topology("star", 5), "metropolis"),
    "complete": graphs.mixing(graphs.topology("complete", 3), "metropolis"),
    "lazy_ring": 0.5 * (np.eye(6) + graphs.mixing(graphs.topology("ring", 6), "metropolis")),
    "bipartite": np.array([[0.0, 1.0], [1.0, 0.0]]),  # lambda_min(W) = -1
}


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta", "gd"])
@pytest.mark.parametrize("name", sorted(MIXINGS))
def test_structured_radius_equals_dense(algorithm, name):
    w = MIXINGS[name]
    problem = _problem(w)
    op = stab.StepOperator(problem, algorithms.get_algorithm(algorithm))
    used = 0
    for s in _scales(problem):
        fast = op.structured_radius(s)
        dense = _dense_radius(op, s)
        if fast is None:  # ATC/CTA with indefinite W above 1/curv only
            assert algorithm in ("atc", "cta") and graphs.lambda_min(w) < 0
            assert op.spectral_radius(s, "structured") == pytest.approx(dense, abs=TOL)
            continue
        used += 1
        assert abs(fast - dense) <= TOL, (s, fast, dense)
    assert used >= 3


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
def test_structured_radius_unequal_shards_profile_and_singular_kernel(algorithm):
    w = MIXINGS["ring"]
    rng = np.random.default_rng(3)
    agent = np.sort(rng.integers(0, 4, 40))
    agent[:4] = np.arange(4)  # every agent holds data
    problem = _problem(w, n=40, agent=agent, rank=7)  # null space of Theta: modulus-1 modes
    profile = np.array([1.0, 0.5, 0.8, 0.3])
    op = stab.StepOperator(problem, algorithms.get_algorithm(algorithm), profile)
    for s in _scales(problem)[:3]:  # s curv <= 0.9: real spectrum for ATC/CTA too
        fast = op.structured_radius(s)
        assert fast is not None
        assert abs(fast - _dense_radius(op, s)) <= TOL


def test_non_symmetric_mixing_falls_back_to_arpack():
    w = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])  # doubly, not symmetric
    problem = _problem(w, n=30)
    for algorithm in ("dgd", "atc"):
        op = stab.StepOperator(problem, algorithms.get_algorithm(algorithm))
        for s in _scales(problem)[1:4]:
            assert op.structured_radius(s) is None
            assert op.spectral_radius(s, "structured") == pytest.approx(
                _dense_radius(op, s), abs=TOL)


@pytest.mark.parametrize("algorithm", ["gradient_tracking", "p2pl", "extra"])
def test_other_schedules_are_not_taken_for_a_low_rank_form(algorithm):
    problem = _problem(MIXINGS["ring"], n=24)
    op = stab.StepOperator(problem, algorithms.get_algorithm(algorithm))
    s = _scales(problem)[1]
    assert op.structured_radius(s) is None
    assert op.spectral_radius(s, "structured") == pytest.approx(_dense_radius(op, s), abs=TOL)


def test_detect_form_reads_the_operator_not_the_name():
    problem = _problem(MIXINGS["ring"], n=24)
    op = stab.StepOperator(problem, algorithms.DGD)

    def factory(form):
        return radius.LowRankStep(problem.kernel, problem.mixing, problem.offsets,
                                  problem.rows_per_sample, np.ones(4), form)

    shape = (4, 24, 2)
    assert radius.detect_form(factory, op.matvec_state, op.local_curvature, shape, 1.0) == "dgd"
    atc = factory("atc")
    assert radius.detect_form(factory, atc.apply, op.local_curvature, shape, 1.0) == "atc"
    cta = factory("cta")
    assert radius.detect_form(factory, cta.apply, op.local_curvature, shape, 1.0) == "cta"
    # an operator of none of the three forms
    assert radius.detect_form(factory, lambda x, s: 0.5 * atc.apply(x, s) + 0.5 * cta.apply(x, s),
                              op.local_curvature, shape, 1.0) is None


def test_shift_invert_solve_is_the_inverse():
    problem = _problem(MIXINGS["star"], n=30)
    x = np.random.default_rng(0).standard_normal((5, 30, 3))
    for form in radius.FORMS:
        step = radius.LowRankStep(problem.kernel, problem.mixing, problem.offsets,
                                  problem.rows_per_sample, np.linspace(0.5, 1, 5), form)
        solve = step.inverse(0.7, 1.0 + 1e-3)
        back = step.apply(solve(x), 0.7) - (1.0 + 1e-3) * solve(x)
        assert np.max(np.abs(back - x)) <= 1e-9 * np.max(np.abs(x))


def test_method_argument_is_checked():
    op = stab.StepOperator(_problem(MIXINGS["ring"], n=12), algorithms.DGD)
    with pytest.raises(ValueError, match="method"):
        op.spectral_radius(0.1, "lanczos")


@pytest.mark.parametrize("gossip", ["edges", "one_edge"])
def test_random_gossip_mean_state_has_the_structured_radius(gossip):
    """Random gossip's operator is the mean-state step with ``E[W]`` (a static step), so the
    structured radii apply to it: equal to the dense radius of that operator and of the
    static problem with ``W = E[W]`` (DGD, ATC, CTA; heavy-ball momentum from DGD's
    eigenvalues).  Before, they were refused for any mixing sequence and the report fell
    back to ARPACK (100 agents on an Erdos-Renyi graph, 800 samples: 46 s of a 53 s
    prediction).  A periodic sequence still has none."""
    graph = graphs.topology("ring", 6)
    process = (graphs.random_edges(graph, 0.5, seed=2) if gossip == "edges"
               else graphs.one_random_edge(graph, seed=2))
    problem = _problem(process, n=36)
    static = _problem(process.expected(), n=36)
    for name in ("dgd", "atc", "cta", "momentum"):
        algo = (algorithms.momentum(0.5) if name == "momentum"
                else algorithms.get_algorithm(name))
        op, op_static = stab.StepOperator(problem, algo), stab.StepOperator(static, algo)
        for s in _scales(problem)[:3]:
            fast = (op.heavy_ball_radius(s) if name == "momentum"
                    else op.structured_radius(s))
            assert fast is not None, (name, s)
            assert abs(fast - _dense_radius(op, s)) <= TOL, (name, s)
            assert abs(fast - _dense_radius(op_static, s)) <= TOL, (name, s)
    mats = [graphs.mixing(graphs.topology(n, 6)) for n in ("ring", "star")]
    periodic = stab.StepOperator(_problem(graphs.periodic(mats), n=36), algorithms.DGD)
    assert periodic.structured_radius(_scales(problem)[1]) is None
