"""The spectral radius of the low-rank feature operator without Krylov on the slow
cluster (ntkdyn/lowrank/radius.py): LOBPCG on M = I - B for DGD, block eigenvalues for GD,
checked against the dense spectrum."""

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.algorithms import get_algorithm
from ntkdyn.kernels import analytic_ntk
from ntkdyn.lowrank import radius
from ntkdyn.lowrank.stability import FeatureProblem, FeatureStepOperator


def problem_factor(seed: int, n: int = 90):
    x = np.random.default_rng(seed).normal(size=(n, 5))
    return lowrank.kernel_columns(analytic_ntk(x, hidden_layers=2))


def problem_agent(seed: int, q: int = 6, n: int = 90) -> np.ndarray:
    agent = np.random.default_rng(seed + 100).integers(0, q, n)
    agent[:q] = np.arange(q)
    return agent


def _problem(seed: int, q: int = 6, n: int = 90, rank: int = 24, topology="erdos_renyi"):
    rng = np.random.default_rng(seed)
    factor = lowrank.factorize(problem_factor(seed, n), rank)
    agent = problem_agent(seed, q, n)
    graph = (nd.graphs.topology("erdos_renyi", q, p=0.6, seed=seed)
             if topology == "erdos_renyi" else nd.graphs.topology(topology, q))
    w = nd.graphs.mixing(graph, rule="metropolis")
    return FeatureProblem(factor, agent, w), rng.uniform(0.3, 1.0, q)


def _dense_radius(op: FeatureStepOperator, s: float) -> float:
    return op.spectral_radius(s, method="dense")


def _curv(problem, profile) -> float:
    return float(np.max(profile * np.array([np.linalg.eigvalsh(g)[-1] for g in
                                            problem.grams]) / problem.counts))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("topology", ["erdos_renyi", "ring"])
@pytest.mark.parametrize("algorithm", ["dgd", "gd"])
def test_structured_radius_equals_dense_spectrum(seed, topology, algorithm):
    """At rates from far below lr* (the slow end sets rho) to far above (the fast end
    does), with per-agent rate profiles: equal to the dense eigenvalues to 1e-10."""
    problem, profile = _problem(seed, topology=topology)
    op = FeatureStepOperator(problem, get_algorithm(algorithm), profile)
    curv = _curv(problem, profile)
    for s in np.array([0.01, 0.3, 0.9, 1.5, 4.0]) / curv:
        got = op.structured_radius(float(s))
        assert got is not None
        want = _dense_radius(op, float(s))
        assert abs(got - want) <= 1e-10 * want, (s, got, want)


def _psd_mixing(q: int, seed: int) -> np.ndarray:
    """A symmetric doubly stochastic W >= 0 (lazy Metropolis: (I + W) / 2)."""
    w = nd.graphs.mixing(nd.graphs.topology("erdos_renyi", q, p=0.6, seed=seed),
                         rule="metropolis")
    return 0.5 * (np.eye(q) + w)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("algorithm", ["atc", "cta"])
def test_atc_cta_symmetric_forms_equal_dense_spectrum(seed, algorithm):
    """ATC/CTA: with an indefinite W up to 1 / curv (S >= 0: S^{1/2} W S^{1/2}), and with
    W >= 0 at every rate (W^{1/2} S W^{1/2}); above 1 / curv with an indefinite W there is
    no symmetric form (None)."""
    problem, profile = _problem(seed, topology="ring")  # ring of 6, Metropolis: indefinite
    assert np.linalg.eigvalsh(problem.mixing)[0] < 0
    op = FeatureStepOperator(problem, get_algorithm(algorithm), profile)
    curv = _curv(problem, profile)
    for s in np.array([0.01, 0.5, 0.99]) / curv:
        got, want = op.structured_radius(float(s)), _dense_radius(op, float(s))
        assert got is not None and abs(got - want) <= 1e-10 * want, (s, got, want)
    assert op.structured_radius(1.5 / curv) is None
    psd = FeatureProblem(lowrank.factorize(problem_factor(seed), 24), problem_agent(seed),
                         _psd_mixing(6, seed))
    op = FeatureStepOperator(psd, get_algorithm(algorithm), profile)
    for s in np.array([0.01, 0.5, 1.5, 2.5, 5.0]) / _curv(psd, profile):
        got, want = op.structured_radius(float(s)), _dense_radius(op, float(s))
        assert got is not None and abs(got - want) <= 1e-10 * want, (s, got, want)


def test_dgd_structured_radius_at_data_set_shape_equals_arpack():
    """Above the dense limit (Q r = 1,600): the same radius as ARPACK on B."""
    problem, _ = _problem(3, q=16, n=1600, rank=100)
    op = FeatureStepOperator(problem, get_algorithm("dgd"))
    for s in (0.2, 2.0):
        got = op.structured_radius(s)
        want = op.spectral_radius(s, method="arpack")
        assert got is not None and abs(got - want) <= 1e-9 * want, (s, got, want)


@pytest.mark.parametrize("algorithm", ["atc", "cta"])
def test_atc_cta_without_a_symmetric_form_fall_back_to_arpack(algorithm):
    """Indefinite W above 1 / curv: None from the structured radius; the fallback (ARPACK
    on the numpy operator) still equals the dense spectrum."""
    problem, profile = _problem(0, topology="ring")
    op = FeatureStepOperator(problem, get_algorithm(algorithm), profile)
    s = 1.5 / _curv(problem, profile)
    assert op.structured_radius(s) is None
    want = _dense_radius(op, s)
    assert abs(op.spectral_radius(s, method="structured") - want) <= 1e-8 * want


def test_non_symmetric_mixing_returns_none():
    problem, _ = _problem(0)
    w = problem.mixing.copy()
    w[0, 1] += 0.05
    w[0, 0] -= 0.05
    step = radius.FeatureStep(problem.grams, w, problem.counts, np.ones(6), "dgd")
    assert radius.feature_radius(step, 0.5, 1.0) is None


def test_unconverged_lobpcg_returns_none_and_the_operator_falls_back(monkeypatch):
    """A LOBPCG that stops short of its tolerance is not reported: None, and the
    operator's radius comes from ARPACK instead (still the dense value)."""
    problem, _ = _problem(1)
    monkeypatch.setattr(radius, "LOBPCG_MAXITER", 1)
    step = radius.FeatureStep(problem.grams, problem.mixing, problem.counts, np.ones(6),
                              "dgd")
    assert radius.feature_radius(step, 0.01, 1.0) is None
    op = FeatureStepOperator(problem, get_algorithm("dgd"))
    want = _dense_radius(op, 0.01)
    assert abs(op.spectral_radius(0.01, method="structured") - want) <= 1e-8 * want


def test_feature_step_is_the_operator():
    """The numpy FeatureStep of each form equals the jitted operator on random states."""
    problem, profile = _problem(2)
    x = np.random.default_rng(5).standard_normal((6, problem.rank, 3))
    for form in ("dgd", "atc", "cta", "gd"):
        op = FeatureStepOperator(problem, get_algorithm(form), profile)
        step = radius.FeatureStep(problem.grams, problem.mixing, problem.counts, profile,
                                  form)
        np.testing.assert_allclose(step.apply(x, 0.7), op.matvec_state(x, 0.7),
                                   rtol=1e-12, atol=1e-12)


def test_krylov_radius_inside_the_stable_set_on_feature_coordinates(monkeypatch):
    """ATC above 1 / curv with an indefinite W on the low-rank coordinates, where the
    largest-modulus search alone gives up at a rate inside the stable set: the feature
    operator has no Woodbury solve (the kernel-space shift-invert raised AttributeError on
    it), so the six-eigenvalue search runs: equal to the dense spectrum."""
    from ntkdyn.dynamics import stability as stab

    problem, profile = _problem(0, topology="ring")
    op = FeatureStepOperator(problem, get_algorithm("atc"), profile)
    s = 1.5 / _curv(problem, profile)
    assert op.structured_radius(s) is None
    monkeypatch.setattr(stab, "_one_eigenvalue", lambda lin, dim, maxiter=0, **kw: None)
    got, want = op.spectral_radius(s, method="arpack", inside=True), _dense_radius(op, s)
    assert abs(got - want) <= 1e-8 * want


@pytest.mark.parametrize("algorithm", ["dgd", "atc"])
def test_consensus_start_saves_products_and_keeps_the_radius(monkeypatch, algorithm):
    """LOBPCG's small end starts from the consensus lifts of the coarse matrix's smallest
    eigenvectors (S^{1/2} times them for ATC's S^{1/2} W S^{1/2}, indefinite W): on a
    ring of 16 agents at 0.5 / curv, fewer products of M than from a random block (the
    counts, measured: DGD 222 against 295, ATC 217 against 294), the same radius to
    1e-12 and equal to the dense spectrum."""
    problem, profile = _problem(1, q=16, n=800, rank=40, topology="ring")
    assert np.linalg.eigvalsh(problem.mixing)[0] < 0
    step = radius.FeatureStep(problem.grams, problem.mixing, problem.counts, profile,
                              algorithm, eigh=problem.agent_eigh)
    curv = _curv(problem, profile)
    s = 0.5 / curv
    x0 = radius.consensus_start(step, s)
    assert x0.shape == (16 * problem.rank, radius.block_size(16 * problem.rank))
    if algorithm == "dgd":  # the same vector on every agent, up to the start's noise
        blocks = x0.reshape(16, problem.rank, -1)
        spread = np.linalg.norm(blocks - blocks.mean(axis=0), axis=(0, 1))
        assert np.all(spread <= 3 * radius.START_NOISE * np.linalg.norm(x0, axis=0))
        assert np.all(spread > 0)
    extreme, counts = radius._extreme, []

    def counted(matvec, precondition, shape, largest, x0=None):
        seen = []

        def mv(x):
            seen.append(x.shape[-1])
            return matvec(x)
        out = extreme(mv, precondition, shape, largest, x0)
        counts.append(sum(seen))
        return out

    monkeypatch.setattr(radius, "_extreme", counted)
    got = radius.feature_radius(step, s, curv)
    monkeypatch.setattr(radius, "consensus_start", lambda step, s: None)
    plain = radius.feature_radius(step, s, curv)
    assert counts[0] < 0.85 * counts[1], counts
    assert abs(got - plain) <= 1e-12
    want = _dense_radius(FeatureStepOperator(problem, get_algorithm(algorithm), profile), s)
    assert abs(got - want) <= 1e-10 * want
