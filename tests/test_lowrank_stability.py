"""Stability on the low-rank coordinates (issue 17): the exact lr* of the truncated
operator, computed on Q r feature coordinates."""

import numpy as np
import pytest

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.dynamics import stability as spectrum
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.kernels import analytic_ntk
from ntkdyn.lowrank.stability import lowrank_stability, lowrank_stable_set


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    n, q, k = 40, 4, 2
    x = rng.normal(size=(n, 5))
    kern = analytic_ntk(x, hidden_layers=2)
    y = np.eye(k)[rng.integers(0, k, n)]
    agent = rng.choice(q, size=n, p=[0.4, 0.2, 0.2, 0.2])
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    full = lowrank.factorize(lowrank.kernel_columns(kern), n)
    return kern, y, agent, w, full


def _exact_lr_star(kern, y, agent, w, algorithm, lr=None):
    problem = make_problem(kern, y, agent, w)
    if lr is None:
        return spectrum.max_stable_lr(problem, algorithm)[0]
    return spectrum.stability(problem, algorithm, lr).lr_star


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta", "gradient_tracking"])
def test_full_rank_lr_star_equals_exact(small, algorithm):
    kern, y, agent, w, full = small
    assert np.max(np.abs(full.phi @ full.phi.T - kern)) <= 1e-9
    exact = _exact_lr_star(kern, y, agent, w, algorithm)
    low = lowrank_stable_set(full, agent, w, algorithm).lr_star
    assert abs(low - exact) <= 1e-8 * exact, (low, exact)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
@pytest.mark.parametrize("rank", [3, 10, 25])
def test_truncated_lr_star_is_exact_for_the_truncated_kernel_and_bounds_the_full(small,
                                                                               algorithm,
                                                                               rank):
    kern, y, agent, w, full = small
    factor = full.truncate(rank)
    low = lowrank_stable_set(factor, agent, w, algorithm).lr_star
    # the exact lr* of the kernel-space operator with the N x N truncated kernel
    truncated = _exact_lr_star(factor.phi @ factor.phi.T, y, agent, w, algorithm)
    assert abs(low - truncated) <= 1e-8 * truncated, (low, truncated)
    # truncation removes curvature: an upper bound on the full lr* (theory/low_rank.md)
    assert low >= _exact_lr_star(kern, y, agent, w, algorithm) * (1 - 1e-10)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "cta"])
def test_truncated_lr_star_bounds_the_full_for_a_reversible_mixing(small, algorithm):
    """The uniform rule on a star (row-stochastic, not symmetric, reversible): its step is
    similar to the step with the symmetric Pi^{1/2} W Pi^{-1/2}, so the Rayleigh-quotient
    argument of theory/low_rank.md section 6 holds and the truncated lr* bounds the full
    one from above, as for a symmetric W; and it is the exact lr* of the truncated
    kernel-space operator (1e-8)."""
    kern, y, agent, _, full = small
    w = nd.graphs.mixing(nd.graphs.topology("star", 4), rule="uniform")
    assert not nd.graphs.is_symmetric(w) and nd.graphs.symmetrised(w) is not None
    for rank in (3, 10, 25):
        factor = full.truncate(rank)
        low = lowrank_stable_set(factor, agent, w, algorithm).lr_star
        truncated = _exact_lr_star(factor.phi @ factor.phi.T, y, agent, w, algorithm)
        assert abs(low - truncated) <= 1e-8 * truncated, (rank, low, truncated)
        assert low >= _exact_lr_star(kern, y, agent, w, algorithm) * (1 - 1e-10), rank


def test_report_with_per_agent_rates_and_labels(small):
    kern, y, agent, w, full = small
    lr = np.array([0.2, 0.3, 0.25, 0.3]) * 40
    factor = full.truncate(10)
    rep = lowrank_stability(factor, agent, w, "dgd", lr)
    ref = spectrum.stability(make_problem(factor.phi @ factor.phi.T, y, agent, w), "dgd", lr)
    assert rep.stable == ref.stable
    assert abs(rep.spectral_radius - ref.spectral_radius) <= 1e-9
    assert abs(rep.lr_star - ref.lr_star) <= 1e-8 * ref.lr_star
    assert "low-rank (rank 10)" in rep.method and "upper bound" in rep.operator


def test_a_shared_feature_problem_gives_the_same_verdicts_and_a_foreign_one_is_refused(small):
    """``problem=`` (one FeatureProblem for several verdicts, as ``ntkdyn check`` does)
    gives the verdicts computed without it; the problem of another factor of the same
    rank, another partition or another mixing matrix is a ValueError naming ``problem``
    (before, only the rank was compared, so any problem of equal rank was accepted)."""
    _, _, agent, w, full = small
    factor = full.truncate(10)
    problem = lowrank.FeatureProblem(factor, agent, w)
    for algorithm in ("dgd", "atc"):
        shared = lowrank_stability(factor, agent, w, algorithm, 0.3, problem=problem)
        alone = lowrank_stability(factor, agent, w, algorithm, 0.3)
        assert shared.lr_star == pytest.approx(alone.lr_star, rel=1e-12)
        assert shared.spectral_radius == pytest.approx(alone.spectral_radius, rel=1e-12)
    other = lowrank.FeatureProblem(full.truncate(10), agent, w)  # equal, but not this factor
    moved = np.roll(agent, 1)
    complete = nd.graphs.mixing(nd.graphs.topology("complete", 4))
    for bad, a, mix in [(other, agent, w), ("gram", agent, w), (problem, moved, w),
                        (problem, agent, complete)]:
        with pytest.raises(ValueError, match="problem: "):
            lowrank_stability(factor, a, mix, "dgd", 0.3, problem=bad)


def test_large_operator_uses_arpack(small):
    """Q r above spectrum.DENSE_MAX: the same lr* by the matrix-free path."""
    rng = np.random.default_rng(2)
    n, q, r = 1600, 40, 40
    phi = rng.normal(size=(n, r)) / np.sqrt(r)
    factor = lowrank.factorize(lowrank.kernel_columns(phi @ phi.T), r)
    agent = np.arange(n) % q
    w = nd.graphs.mixing(nd.graphs.topology("ring", q))
    found = lowrank_stable_set(factor, agent, w, "dgd")
    assert q * r > spectrum.DENSE_MAX and found.method == "minus-one-crossing (exact)"
    s = found.lr_star
    op = lowrank.stability.FeatureStepOperator(
        lowrank.stability.FeatureProblem(factor, agent, w), nd.algorithms.get_algorithm("dgd"))
    assert op.spectral_radius(0.99 * s, method="dense") <= 1 + 1e-9
    assert op.spectral_radius(1.01 * s, method="dense") > 1 + 1e-6


def test_periodic_sequence_by_krylov_equals_dense(small, monkeypatch):
    """A periodic sequence on the low-rank coordinates above the dense limit (lowered
    here): the Krylov search (``secant-arpack``) runs on the feature operator, which has
    no structured form, and finds the dense stable set to 1e-8."""
    from ntkdyn.graphs.sequences import periodic

    kern, y, agent, w, full = small
    cycle = periodic([w, nd.graphs.mixing(nd.graphs.topology("star", 4))])
    factor = full.truncate(10)
    dense = lowrank_stable_set(factor, agent, cycle, "dgd")
    assert dense.method == "brent-dense"
    monkeypatch.setattr(spectrum, "DENSE_MAX", 10)
    krylov = lowrank_stable_set(factor, agent, cycle, "dgd")
    assert krylov.method == "secant-arpack"
    assert krylov.lr_star == pytest.approx(dense.lr_star, rel=1e-8)


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "gradient_tracking"])
def test_feature_rows_form_equals_gram_form(small, algorithm, monkeypatch):
    """Where ``Q r > 2 N`` the operator's products read the agents' rows ``Phi_q``
    (``G_q v = Phi_q^T (Phi_q v)``) instead of ``G_q``: the same operator, on one step and
    on a period of a sequence, the same local curvature and the same numpy step (the
    Krylov fallback of a static ``W``), to 1e-13."""
    from ntkdyn.graphs.sequences import periodic
    from ntkdyn.lowrank.stability import FeatureProblem, FeatureStepOperator

    kern, y, agent, w, full = small
    factor = full.truncate(30)  # Q r = 120 > 2 N = 80: the rows form
    cycle = periodic([w, nd.graphs.mixing(nd.graphs.topology("star", 4))])
    algo = nd.algorithms.get_algorithm(algorithm)
    for mixing in (w, cycle):
        problem = FeatureProblem(factor, agent, mixing)
        assert not problem.gram_form
        rows = FeatureStepOperator(problem, algo, [1.0, 0.5, 0.7, 0.9])
        x = np.random.default_rng(3).normal(size=(4, 30, 2))
        rows_h = np.asarray(rows.local_curvature(x))
        rows_a = rows.dense(0.3)
        rows_step = rows.form_step("atc")  # the numpy step of the Krylov fallback
        assert rows_step.rows is not None
        monkeypatch.setattr(FeatureProblem, "gram_form", property(lambda self: True))
        gram = FeatureStepOperator(problem, algo, [1.0, 0.5, 0.7, 0.9])
        gram_step = gram.form_step("atc")
        monkeypatch.undo()
        assert gram_step.rows is None
        scale = np.max(np.abs(rows_a))
        assert np.max(np.abs(rows_a - gram.dense(0.3))) <= 1e-13 * scale
        np.testing.assert_allclose(rows_step.apply(x, 0.3), gram_step.apply(x, 0.3),
                                   rtol=1e-12, atol=1e-13 * np.max(np.abs(x)))
        expected = np.einsum("qrs,qsc->qrc", problem.grams, x) \
            * (np.array([1.0, 0.5, 0.7, 0.9]) / problem.counts)[:, None, None]
        np.testing.assert_allclose(rows_h, expected, rtol=1e-12, atol=1e-14)


def test_structured_radius_of_a_reversible_mixing_on_the_feature_coordinates(small):
    """The feature operator with a reversible non-symmetric ``W`` (uniform rule on a path
    of 4): LOBPCG on the similar step with ``Pi^{1/2} W Pi^{-1/2}`` gives the dense radius
    of the step with ``W`` (1e-8), and the stable set is the symmetrised matrix's
    ``-1`` crossing, equal to the dense scan (1e-8)."""
    from ntkdyn.lowrank.stability import FeatureProblem, FeatureStepOperator

    kern, y, agent, w, full = small
    w = nd.graphs.mixing(nd.graphs.topology("path", 4), "uniform")
    assert not nd.graphs.is_symmetric(w)
    factor = full.truncate(10)
    op = FeatureStepOperator(FeatureProblem(factor, agent, w),
                             nd.algorithms.get_algorithm("dgd"))
    found = lowrank_stable_set(factor, agent, w, "dgd")
    assert found.method == "minus-one-crossing (exact)"
    for s in (0.5 * found.lr_star, 1.1 * found.lr_star):
        fast = op.structured_radius(s)
        assert fast is not None
        assert fast == pytest.approx(op.spectral_radius(s, method="dense"), rel=1e-8)
    assert op.spectral_radius(found.lr_star * (1 - 1e-7), method="dense") <= 1 + 1e-9
    assert op.spectral_radius(found.lr_star * (1 + 1e-6), method="dense") > 1 + 1e-9
