"""Exact stability boundary, sufficient bounds and the ring-of-4 example."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkdyn import algorithms, graphs
from ntkdyn.dynamics import stability as stab
from ntkdyn.dynamics.problem import make_problem
from ntkdyn.prediction import predict_from_kernels


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
    # the report says the rates differ and which one lr and lr* are (it read "DGD at
    # lr=0.5: ... lr*=..." as if all agents had rate 0.5); one rate reads as before
    report = stab.stability(prob, "dgd", 0.5 * profile)
    assert report.lr_min == 0.15 and report.lr == 0.5
    assert report.describe().startswith("DGD at per-agent rates 0.15..0.5 (lr=0.5, the "
                                        "largest; the stable set, lr* and the bound are of "
                                        "the largest rate, the agents' ratios kept fixed): ")
    same = stab.stability(prob, "dgd", 0.5)
    assert same.lr_min is None and same.describe().startswith("DGD at lr=0.5: ")


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


# ------------------------------------------------------------------ issue 16: the stable set
SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])
W3 = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])


def _swap_problem():
    return make_problem(np.eye(4), np.ones((4, 1)), [0, 1, 0, 1], SWAP)


def _dense_rho(prob, algorithm, s):
    op = stab.StepOperator(prob, algorithms.get_algorithm(algorithm))
    return float(np.max(np.abs(np.linalg.eigvals(op.dense(s)))) ** (1.0 / op.period_steps))


def test_dgd_on_the_swap_matrix_is_unstable_at_every_rate_and_returns():
    """Issue 16, case 1: lambda_min(W) = -1, DGD used to hang (bracket [0, 1.25 * 0])."""
    prob = _swap_problem()
    rep = stab.stability(prob, "dgd", 0.1)
    assert not rep.stable and rep.stable_rates == () and rep.lr_star == 0.0
    assert rep.margin == -np.inf and "unstable at every rate" in rep.describe()
    assert stab.max_stable_lr(prob, "dgd")[0] == 0.0
    for s in (1e-4, 0.1, 1.0, 10.0):  # dense check: every rate leaves through -1
        assert _dense_rho(prob, "dgd", s) > 1 + 1e-9
    traj = predict_from_kernels(np.eye(4), np.ones((4, 1)), [0, 1, 0, 1], SWAP, 0.1, [0, 10])
    assert traj.status == "unstable"


def test_gradient_tracking_on_the_swap_matrix_returns_unstable_at_every_rate():
    """Issue 16, case 2: used to end in scipy's 'f(a) and f(b) must have different signs'."""
    prob = _swap_problem()
    for name in ("gradient_tracking", "diging"):
        rep = stab.stability(prob, name, 0.1)
        assert not rep.stable and rep.stable_rates == () and rep.lr_star == 0.0
        assert "unstable at every rate" in rep.describe()
        for s in (1e-3, 0.1, 1.0, 4.0):
            assert _dense_rho(prob, name, s) > 1 + 1e-9
    traj = predict_from_kernels(np.eye(4), np.ones((4, 1)), [0, 1, 0, 1], SWAP, 0.1, [0, 10],
                                algorithm="gradient_tracking")
    assert traj.status == "unstable"


def test_momentum_on_the_three_cycle_has_a_stable_set_away_from_zero():
    """Issue 16, case 3: the stable set is about [1.85, 6.62]; at lr 0.5 the report used to
    say "diverge" beside "margin +92.5%"."""
    from ntkdyn import algorithms

    prob = make_problem(np.eye(6), np.ones((6, 1)), np.arange(6) % 3, W3)
    mom = algorithms.momentum(0.9)
    rep = stab.stability(prob, mom, 0.5)
    assert not rep.stable and rep.margin < 0
    ((lo, hi),) = rep.stable_rates
    assert 1.8 < lo < 1.9 and hi == pytest.approx(6.62296, rel=1e-5)
    assert rep.lr_star == hi and "unstable at small rates" in rep.describe()
    for s, inside in ((0.99 * lo, False), (1.01 * lo, True), (0.99 * hi, True),
                      (1.01 * hi, False), (0.5, False), (1e-3, False)):
        assert (_dense_rho(prob, mom, s) <= 1 + 1e-9) == inside, s
    inside = stab.stability(prob, mom, 3.0)
    assert inside.stable and 0 < inside.margin == pytest.approx(min(1 - 3 / hi, 1 - lo / 3))
    above = stab.stability(prob, mom, 7.0)
    assert not above.stable and above.margin == pytest.approx(1 - 7 / hi)


def test_kernel_free_operator_is_stable_at_every_rate():
    prob = make_problem(np.zeros((4, 4)), np.ones((4, 1)), [0, 1, 0, 1],
                        graphs.mixing(graphs.topology("complete", 2)))
    rep = stab.stability(prob, "gradient_tracking", 0.3)
    assert rep.stable and rep.stable_rates == ((0.0, np.inf),) and rep.lr_star == np.inf
    assert "stable at every rate" in rep.describe()


@pytest.mark.parametrize("algorithm", ["dgd", "atc", "extra"])
def test_zero_kernel_gets_a_verdict_not_a_zero_division(algorithm):
    """The sufficient bounds divide by the largest curvature: the zero kernel was a raw
    ZeroDivisionError from ``stability`` and ``predict_from_kernels``.  Nothing is learned:
    the operator alone decides, stable at every rate on the complete graph."""
    prob = make_problem(np.zeros((4, 4)), np.ones((4, 1)), [0, 1, 0, 1],
                        graphs.mixing(graphs.topology("complete", 2)))
    rep = stab.stability(prob, algorithm, 0.3)
    assert rep.stable and rep.lr_star == np.inf
    traj = predict_from_kernels(np.zeros((4, 4)), np.ones((4, 1)), [0, 1, 0, 1],
                                graphs.mixing(graphs.topology("complete", 2)), 0.3, [0, 5],
                                algorithm=algorithm)
    np.testing.assert_allclose(traj.train_loss, 0.5, rtol=1e-14)  # f = 0 throughout


def test_undecided_search_raises_a_clear_error(monkeypatch):
    """A schedule stable up to 2^20 / curv whose operator depends on the rate: the search
    stops and says what it could not decide."""
    prob, *_ = _problem(n=8)
    monkeypatch.setattr(stab.StepOperator, "spectral_radius", lambda self, s, method="auto": 0.5)
    with pytest.raises(stab.StabilityUndecided, match="could not decide whether larger"):
        stab.stable_set(prob, algorithms.p2pl(2, 1))


def _random_mixing(q, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "zero_diagonal_ring":  # even ring without self-loops: lambda_min = -1
        w = np.zeros((q, q))
        for i in range(q):
            w[i, (i + 1) % q] += 0.5
            w[i, (i - 1) % q] += 0.5
        return w
    if kind == "symmetric":
        g = graphs.topology("erdos_renyi", q, p=0.7, seed=seed)
        return graphs.mixing(g, rng.choice(["metropolis", "max_degree"]),
                             lazy=bool(rng.integers(2)))
    mask = rng.random((q, q)) < 0.6  # non-symmetric row-stochastic, a cycle keeps it connected
    mask[np.arange(q), (np.arange(q) + 1) % q] = True
    w = mask * rng.random((q, q))
    return w / w.sum(axis=1, keepdims=True)


@st.composite
def small_problems(draw):
    from ntkdyn import algorithms

    q = draw(st.integers(2, 4))
    m = draw(st.integers(1, 3))  # samples per agent
    seed = draw(st.integers(0, 10_000))
    kinds = ["symmetric", "nonsymmetric"] + ["zero_diagonal_ring"] * (q % 2 == 0)
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(seed)
    n, d = q * m, draw(st.integers(1, 4))
    x = rng.normal(size=(n, d))
    kern = x @ x.T / d + draw(st.sampled_from([0.0, 0.1])) * np.eye(n)
    w = _random_mixing(q, seed, kind)
    algo = draw(st.sampled_from(["dgd", "atc", "cta", "gradient_tracking", "next", "diging",
                                 "extra", "momentum"]))
    if algo == "momentum":
        algo = algorithms.momentum(draw(st.sampled_from([0.5, 0.9])))
    prob = make_problem(kern, np.eye(2)[rng.integers(0, 2, n)], np.arange(n) % q, w)
    profile = None
    if draw(st.booleans()):  # per-agent rates (max 1): the crossings' equal_rates_only
        profile = rng.uniform(0.2, 1.0, q)
        profile /= profile.max()
    return prob, algo, profile


# derandomize: the same 15 examples in every run.  A random run can draw a case outside
# what the scan promises (theory/stability.md section 6: an unstable window narrower than
# the grid spacing): ATC on the zero-diagonal ring of 4 (lambda_min(W) = -1) with a
# rank-deficient kernel has radius exactly 1 at the grid rates around 2.3 and 2.74 and
# 1.004-1.009 between them (found in one run at stop 36).  Explore with --hypothesis-seed.
@settings(max_examples=15, deadline=None, derandomize=True)
@given(case=small_problems())
def test_stable_set_matches_the_dense_spectral_radius(case):
    """Property (issue 16): on random small problems, with one rate or per-agent rates,
    the stable set agrees with the eigenvalues of the dense operator on a fine grid of
    rates (80 rates, ratio 1.09, over [0.01, 10] / curv): every rate farther than 1e-6
    (relative) from a reported end has the verdict of the dense radius (rates where the
    dense radius is within 1e-7 of 1 are marginal and skipped); every finite end > 0 is a
    crossing of the dense radius (1e-6 either side); the report at a random rate agrees
    with the dense radius there."""
    prob, algo, profile = case
    found = stab.stable_set(prob, algo, profile=profile)
    op = stab.StepOperator(prob, algorithms.get_algorithm(algo), profile)
    curv = float(np.max(stab.agent_curvatures(prob)))

    def dense(s):
        return float(np.max(np.abs(np.linalg.eigvals(op.dense(s)))))

    ends = [e for iv in found.intervals for e in iv if 0 < e < np.inf]
    for s in np.geomspace(0.01, 10.0, 80) / curv:
        if any(abs(s - e) <= 1e-6 * e for e in ends):
            continue
        rho = dense(s)
        if abs(rho - 1) < 1e-7:
            continue
        assert found.contains(s) == (rho <= 1 + stab.RHO_TOL), (s, rho, found)
    for lo, hi in found.intervals:
        if lo > 0:
            assert dense(lo * (1 - 1e-6)) > 1 + stab.RHO_TOL >= dense(lo * (1 + 1e-6)), (lo, found)
        if np.isfinite(hi):
            assert dense(hi * (1 - 1e-6)) <= 1 + stab.RHO_TOL < dense(hi * (1 + 1e-6)), (hi, found)
    s = 0.37 / curv
    rep = stab.stability(prob, algo, s if profile is None else s * profile)
    assert rep.stable == (dense(s) <= 1 + stab.RHO_TOL)
    assert (rep.margin > 0) == rep.stable or rep.margin == 0


# ------------------------------------------------------------ issue 12 item 4: non-PSD kernels
def _with_eigenvalues(vals, seed=0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(len(vals), len(vals))))
    return (basis * vals) @ basis.T


@pytest.mark.parametrize("n", [8, 600])  # exact eigenvalues; Lanczos above PSD_DENSE_MAX rows
def test_indefinite_training_kernel_is_refused_with_its_smallest_eigenvalue(n):
    """Issue 12: an indefinite kernel used to give status "ok" while the train loss grew
    from 0.5 to 1e14."""
    vals = np.linspace(0.5, 2.0, n)
    vals[0] = -0.3
    kern = _with_eigenvalues(vals)
    kern = 0.5 * (kern + kern.T)
    y, agent, w = np.eye(2)[np.arange(n) % 2], np.arange(n) % 2, SWAP * 0.5 + 0.25
    with pytest.raises(ValueError, match=r"kernel_train: .*indefinite.*smallest eigenvalue "
                                         r"-0\.3\d* .*= -0\.15 x the largest"):
        make_problem(kern, y, agent, w)
    with pytest.raises(ValueError, match="kernel_train: .*indefinite"):
        predict_from_kernels(kern, y, agent, w, 0.1, [0, 10])


def test_negative_definite_training_kernel_is_refused():
    kern = -_kernel(n=8)[0]
    with pytest.raises(ValueError, match="kernel_train: .*a negative definite one"):
        make_problem(kern, np.ones((8, 1)), np.arange(8) % 2, SWAP * 0.5 + 0.25)


def test_psd_tolerance_is_relative_to_the_largest_eigenvalue():
    """Rank-deficient Gram matrices (rounding ~1e-16 relative) pass, at every scale; a
    float32 Gram matrix passes with the float32 tolerance (100 eps = 1.2e-5); -1e-6 x the
    largest is refused in float64."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    y, agent, w = np.ones((40, 1)), np.arange(40) % 2, SWAP * 0.5 + 0.25
    for scale in (1e-6, 1.0, 1e6):
        make_problem(scale * x @ x.T, y, agent, w)  # rank 3 of 40: accepted
    x32 = x.astype(np.float32)
    make_problem(x32 @ x32.T, y, agent, w)
    vals = np.linspace(0.0, 1.0, 40)
    vals[0] = -1e-6
    with pytest.raises(ValueError, match="kernel_train"):
        make_problem(_with_eigenvalues(vals), y, agent, w)


@pytest.mark.parametrize("name", ["dgd", "atc", "gradient_tracking"])
def test_stability_resolves_the_name_once_and_builds_one_operator(monkeypatch, name):
    """Issue 13 item 3: ``nd.stability(problem, "dgd", lr)`` called ``get_algorithm`` 8 times,
    built 2 step operators and sent the kernel blocks to the device 3 times.  Now the name
    is resolved once at the boundary and one operator (one copy of the kernel blocks) serves
    the whole report, with the same lr*, bound and radius as before (measured on this
    problem before the change: DGD lr* 0.816644, bound 0.500216; ATC 3.20458, 1.50065)."""
    import ntkdyn as nd

    prob, *_ = _problem(n=16)
    calls = {"get_algorithm": 0, "StepOperator": 0, "row_blocks": 0}

    def counting(module, attr, key):
        original = getattr(module, attr)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, attr, wrapper)

    counting(algorithms, "get_algorithm", "get_algorithm")
    counting(stab, "get_algorithm", "get_algorithm")
    counting(stab, "row_blocks", "row_blocks")
    init = stab.StepOperator.__init__

    def counted_init(self, *args, **kwargs):
        calls["StepOperator"] += 1
        init(self, *args, **kwargs)
    monkeypatch.setattr(stab.StepOperator, "__init__", counted_init)
    rep = nd.stability(prob, name, 0.3)
    assert calls == {"get_algorithm": 1, "StepOperator": 1, "row_blocks": 1}, calls
    if name == "dgd":
        assert rep.method == "minus-one-crossing (exact)"
        assert rep.lr_star == pytest.approx(stab.max_stable_lr(prob, "dgd")[0], rel=1e-12)


def test_schedule_facts_are_fields_not_names():
    """A user's schedule that happens to be called "dgd" gets no closed-form facts (it has
    none), and the built-in facts travel with the object: a renamed DGD keeps its crossing
    and bound."""
    import dataclasses

    prob, *_ = _problem(n=16)
    impostor = algorithms.Algorithm("dgd", algorithms.ATC.step)
    assert np.isnan(stab.sufficient_bound(prob, impostor))
    assert stab.stable_set(prob, impostor).method.startswith("brent")
    assert stab.stable_set(prob, impostor).lr_star == pytest.approx(
        stab.max_stable_lr(prob, "atc")[0], rel=1e-7)
    renamed = dataclasses.replace(algorithms.DGD, name="my_dgd")
    assert stab.sufficient_bound(prob, renamed) == stab.sufficient_bound(prob, "dgd")
    assert stab.stable_set(prob, renamed).method == "minus-one-crossing (exact)"
    for algo in (algorithms.get_algorithm(n) for n in algorithms.NAMES):
        assert algo.name in algorithms.NAMES


def _large_atc_problem():
    """ATC on a ring of 8 with Metropolis weights (W indefinite, so the -1 crossing needs
    verifying) and 1,600 state dimensions: above DENSE_MAX, so the verification is Krylov."""
    n, q = 200, 8
    kern, y = _kernel(n=n, seed=3)
    w = graphs.mixing(graphs.topology("ring", q), "metropolis")
    assert np.linalg.eigvalsh(w)[0] < 0
    return make_problem(kern, y, np.arange(n) % q, w)


def test_quick_verification_of_the_minus_one_crossing_is_the_boundary():
    """Above the dense limit the crossing is verified by one Krylov eigenvalue (the one
    near -1, isolated from the slow cluster): lr* is then the boundary of the dense
    spectral radius (stable just below, unstable just above), and equal to the lr* found
    when the full radius verifies it instead."""
    prob = _large_atc_problem()
    assert stab.StepOperator(prob, algorithms.ATC).dim > stab.DENSE_MAX
    cache: dict = {}
    found = stab.stable_set(prob, "atc", cache=cache)
    assert found.method == "minus-one-crossing (verified)"
    assert cache == {}  # verified without the full (six-eigenvalue) radius
    lr_star = found.lr_star
    below = stab.spectral_radius(prob, "atc", lr_star * (1 - 1e-6), method="dense")
    above = stab.spectral_radius(prob, "atc", lr_star * (1 + 1e-6), method="dense")
    assert below <= 1 + stab.RHO_TOL < above


def test_unconverged_quick_verification_falls_back_to_the_full_radius(monkeypatch):
    """If the one-eigenvalue Krylov check does not converge, the full radius verifies: the
    same stable set, and the radius at the verified rate was computed (it is cached)."""
    prob = _large_atc_problem()
    want = stab.stable_set(prob, "atc")

    def no_convergence(*args, **kwargs):
        if kwargs.get("k") == 1 and kwargs.get("maxiter") == stab.QUICK_MAXITER:
            raise stab.spla.ArpackNoConvergence("forced", np.array([]), np.array([]))
        return eigs(*args, **kwargs)

    eigs = stab.spla.eigs
    monkeypatch.setattr(stab.spla, "eigs", no_convergence)
    cache: dict = {}
    got = stab.stable_set(prob, "atc", cache=cache)
    np.testing.assert_allclose(np.array(got.intervals), np.array(want.intervals), rtol=1e-12)
    (below,) = cache  # the full radius at the verified rate, and nothing else
    assert cache[below] <= 1 + stab.RHO_TOL


def test_arpack_discards_ritz_values_that_are_not_eigenvalues():
    """Heavy-ball momentum on a non-symmetric W at 2.5 / curv: a cluster of 180 eigenvalues
    of modulus 1.181 in 462 dimensions.  ARPACK with a 48-vector basis reports 'converged'
    Ritz values of modulus 9.3-11.8 (above the operator's 2-norm, 3.86), whose residuals
    equal their size; the radius must not be taken from them: it equals the dense radius,
    and stays below the 2-norm."""
    from ntkdyn.kernels import analytic_ntk

    rng = np.random.default_rng(3)
    q, n = int(rng.integers(3, 8)), int(rng.integers(30, 70))
    x = rng.normal(size=(n, 4))
    agent = rng.integers(0, q, n)
    agent[:q] = np.arange(q)
    w = 0.7 * graphs.mixing(graphs.topology("ring", q), "metropolis") + 0.3 * np.roll(
        np.eye(q), 1, axis=1)  # doubly stochastic, not symmetric
    prob = make_problem(analytic_ntk(x, hidden_layers=2), np.ones((n, 1)), agent, w)
    op = stab.StepOperator(prob, algorithms.get_algorithm("momentum"))
    s = 2.5 / float(np.max(stab.agent_curvatures(prob)))
    dense = op.spectral_radius(s, method="dense")
    arpack = op.spectral_radius(s, method="arpack")
    assert arpack <= np.linalg.norm(op.dense(s), 2)
    assert arpack == pytest.approx(dense, rel=1e-6)


@pytest.mark.parametrize("algorithm", ["atc", "cta"])
def test_krylov_radius_of_atc_with_indefinite_mixing_above_one_over_curv(monkeypatch,
                                                                          algorithm):
    """ATC/CTA with an indefinite W above 1 / curv has no structured radius; the Krylov
    radius (found with 100 agents: 135 s at an unstable rate, over 10 minutes at a stable
    one) now asks for the largest eigenvalue alone first, and where that does not converge
    at a rate inside the stable set, takes the eigenvalue nearest 1 by shift-invert.  Both
    agree with the dense spectrum to 1e-8 (the second forced by making the first give up)."""
    q, n = 10, 40
    w = graphs.mixing(graphs.topology("erdos_renyi", q, p=0.3, seed=3), "metropolis")
    assert graphs.lambda_min(w) < -0.05  # indefinite
    kern, y = _kernel(n=n, seed=2)
    prob = make_problem(kern, y, np.arange(n) % q, w)
    op = stab.StepOperator(prob, algorithms.get_algorithm(algorithm))
    curv = float(np.max(stab.agent_curvatures(prob)))
    found = stab.stable_set(prob, algorithm)
    inside, outside = 0.9 * found.lr_star, 1.3 * found.lr_star
    assert inside * curv > 1 and found.contains(inside) and not found.contains(outside)
    assert op.structured_radius(inside) is None  # the case without a structured radius
    for s in (inside, outside):
        dense = _dense_rho(prob, algorithm, s)
        assert abs(op.spectral_radius(s, method="arpack", inside=found.contains(s)) - dense) \
            <= 1e-8 * dense, s
    monkeypatch.setattr(stab, "_one_eigenvalue", lambda lin, dim, maxiter=0, **kw: None)
    dense = _dense_rho(prob, algorithm, inside)
    assert dense < 1
    assert abs(op.spectral_radius(inside, method="arpack", inside=True) - dense) <= 1e-8


@pytest.mark.parametrize(("beta", "topology"), [(0.3, "ring"), (0.9, "complete")])
def test_momentum_on_dgd_stable_set_is_the_shifted_crossing(beta, topology):
    """Heavy-ball momentum on DGD with symmetric W: the augmented step is a polynomial in
    DGD's A(s), so the stable set is [0, s_c] with ((1 + 2 beta) I + W) z = s_c D H z
    (theory/stability.md section 5; the general scan took 142 s of `ntkdyn check` on 4,800
    dimensions).  Equal to the scan without the crossing to 1e-8 (relative), and the dense
    radius crosses 1 there; momentum on ATC has no crossing."""
    import dataclasses

    prob, *_ = _problem(topology, q=4, n=16)
    mom = algorithms.momentum(beta)
    found = stab.stable_set(prob, mom)
    assert found.method == "minus-one-crossing (exact)"
    scan = stab.stable_set(prob, dataclasses.replace(mom, minus_one_crossing=None))
    assert scan.method.startswith("brent")
    (lo, hi), ((lo_s, hi_s),) = found.intervals[0], scan.intervals
    assert lo == 0 and lo_s == 0 and hi == pytest.approx(hi_s, rel=1e-8)
    assert _dense_rho(prob, mom, hi * (1 - 1e-6)) <= 1 + 1e-9 < _dense_rho(prob, mom,
                                                                           hi * (1 + 1e-6))
    assert algorithms.momentum(beta, base="atc").minus_one_crossing is None


def test_scan_takes_rates_below_the_sufficient_bound_as_stable():
    """The general scan (P2PL: no crossing) evaluates no spectral radius below the
    schedule's sufficient bound, a theorem there, and finds the same stable set as the full
    scan (on 1,920 dimensions the full scan had not finished in 10 minutes; 134 s now)."""
    prob, *_ = _problem("ring", q=4, n=24)
    algo = algorithms.p2pl(3, 1)
    bound = stab.schedule_sufficient_bound(prob, algo)
    assert np.isfinite(bound) and bound > 0
    op = stab.StepOperator(prob, algo)
    asked, radius = [], op.spectral_radius

    def counted(s, *args, **kwargs):
        asked.append(s)
        return radius(s, *args, **kwargs)

    op.spectral_radius = counted
    found = stab.operator_stable_set(op, bound)
    assert asked and min(asked) >= bound
    full = stab.operator_stable_set(stab.StepOperator(prob, algo), float("nan"))
    np.testing.assert_allclose(found.intervals, full.intervals, rtol=1e-12)
    assert found.lr_star > bound


@pytest.mark.parametrize(("beta", "topology"), [(0.5, "ring"), (0.9, "complete")])
def test_momentum_radius_from_dgd_extremes_equals_the_dense_spectrum(beta, topology):
    """Heavy-ball momentum on DGD: rho from DGD's two extreme eigenvalues through the
    quadratic mu^2 - (lam + beta) mu + beta (radius.heavy_ball_radius; ARPACK on the
    augmented state had taken 7.4 s of a 23 s check) equals the dense radius to 1e-9, at
    rates inside the stable set, near lr* and beyond it."""
    prob, *_ = _problem(topology, q=4, n=24)
    mom = algorithms.momentum(beta)
    op = stab.StepOperator(prob, mom)
    lr_star = stab.stable_set(prob, mom).lr_star
    for frac in (0.01, 0.3, 0.99, 1.2):
        s = frac * lr_star
        got = op.heavy_ball_radius(s)
        want = op.spectral_radius(s, method="dense")
        assert got is not None and abs(got - want) <= 1e-9 * want, (frac, got, want)
        assert op.spectral_radius(s, method="structured") == got
    assert stab.StepOperator(prob, algorithms.momentum(beta, base="atc")).algorithm \
        .heavy_ball is None


MEMORY = {"gradient_tracking": algorithms.GRADIENT_TRACKING, "next": algorithms.NEXT,
          "diging": algorithms.DIGING, "extra": algorithms.EXTRA}


@pytest.mark.parametrize("topology", ["ring", "complete"])
@pytest.mark.parametrize("name", list(MEMORY))
def test_schedules_with_memory_stable_set_is_the_minus_one_crossing(name, topology):
    """Gradient tracking, NEXT, DIGing and EXTRA with a symmetric W and one rate: the
    Cayley transform of their quadratic eigenproblem has symmetric coefficients and a PSD
    middle one, so eigenvalues leave the unit disc only through -1 (theory/stability.md
    section 5a; `ntkdyn check` with gradient tracking on 7,200 dimensions: 172.6 -> 31.4 s).
    Equal to the scan without the crossing to 1e-8 (relative; the scan's own tolerance is
    1e-9), and the dense radius crosses 1 there.  The Metropolis ring of 4 has
    lambda_min(W) = -1/3: exact for all but NEXT, whose crossing is verified there."""
    import dataclasses

    prob, *_ = _problem(topology, q=4, n=16)
    algo = MEMORY[name]
    found = stab.stable_set(prob, algo)
    indefinite = graphs.lambda_min(prob.mixing) < -1e-12
    expected = "verified" if (indefinite and name == "next") else "exact"
    assert found.method == f"minus-one-crossing ({expected})"
    scan = stab.stable_set(prob, dataclasses.replace(algo, minus_one_crossing=None))
    assert scan.method.startswith("brent")
    ((lo, hi),), ((lo_s, hi_s),) = found.intervals, scan.intervals
    assert lo == 0 and lo_s == 0 and hi == pytest.approx(hi_s, rel=1e-8)
    assert _dense_rho(prob, algo, hi * (1 - 1e-6)) <= 1 + 1e-9 < _dense_rho(prob, algo,
                                                                            hi * (1 + 1e-6))


def test_schedules_with_memory_and_per_agent_rates_are_scanned():
    """Per-agent rates scale the tracked gradient, which does not commute with the
    tracking recursion: the crossing is not the boundary for the three tracking schedules
    (gradient tracking on a ring of 4 with rates 1 : 0.3 : 0.6 : 0.2 is stable up to 6.43,
    its crossing is 4.00; verifying the radius just below the crossing would have accepted
    4.00).  Those cases are scanned and the boundary is where the dense radius crosses 1."""
    prob, *_ = _problem("ring", q=4, n=16)
    profile = np.array([1.0, 0.3, 0.6, 0.2])
    algo = algorithms.GRADIENT_TRACKING
    found = stab.stable_set(prob, algo, profile=profile)
    assert found.method.startswith("brent")
    op = stab.StepOperator(prob, algo, profile)
    crossing = stab._minus_one_crossing(op, algo.minus_one_crossing.factor(prob.mixing))
    hi = found.lr_star

    def dense(s):
        return float(np.max(np.abs(np.linalg.eigvals(op.dense(s)))))

    assert dense(hi * (1 - 1e-6)) <= 1 + 1e-9 < dense(hi * (1 + 1e-6))
    assert hi > 1.2 * crossing
    for name in ("next", "diging"):
        found = stab.stable_set(prob, MEMORY[name], profile=profile)
        assert found.method.startswith("brent"), name


def test_extra_crossing_is_exact_with_per_agent_rates():
    """EXTRA scales the gradient itself (D H stays symmetric PSD), so its crossing is the
    boundary for any rate profile: equal to the scan without the crossing to 1e-8."""
    import dataclasses

    prob, *_ = _problem("ring", q=4, n=16)
    profile = np.array([1.0, 0.3, 0.6, 0.2])
    found = stab.stable_set(prob, algorithms.EXTRA, profile=profile)
    assert found.method.startswith("minus-one-crossing")  # (per-agent rates: verified)
    scan = stab.stable_set(prob, dataclasses.replace(algorithms.EXTRA, minus_one_crossing=None),
                           profile=profile)
    assert found.lr_star == pytest.approx(scan.lr_star, rel=1e-8)


def test_krylov_radius_inside_the_stable_set_skips_the_leftmost_search(monkeypatch):
    """Inside the stable set every modulus is <= 1, so the Krylov radius asks for the
    largest moduli only: NEXT on a Metropolis ring of 8 (7,200 dimensions, W indefinite)
    spent 12 minutes of `ntkdyn check` in the leftmost search, in the defective pairs
    mu = lambda(W) < 0 the kernel does not see, and failed with a traceback; 'LM' gives
    the radius in 4 s.  Here (forced above the dense limit): equal to the dense radius to
    1e-8, and 'SR' never asked; outside the set both searches still run."""
    prob, *_ = _problem("ring", q=8, n=24)
    algo = algorithms.NEXT
    found = stab.stable_set(prob, algo)
    assert graphs.lambda_min(prob.mixing) < 0 and found.method.endswith("(verified)")
    s = 0.5 * found.lr_star
    dense = _dense_rho(prob, algo, s)
    asked, arpack = [], stab._arpack

    def spy(op, which, k, dim):
        asked.append(which)
        return arpack(op, which, k, dim)

    monkeypatch.setattr(stab, "_arpack", spy)
    monkeypatch.setattr(stab, "_one_eigenvalue", lambda lin, dim, maxiter=0, **kw: None)
    op = stab.StepOperator(prob, algo)
    assert abs(op.spectral_radius(s, method="arpack", inside=True) - dense) <= 1e-8
    assert asked == ["LM"]
    asked.clear()
    out = 1.05 * found.lr_star
    assert op.spectral_radius(out, method="arpack") == pytest.approx(_dense_rho(prob, algo, out),
                                                                     rel=1e-8)
    assert sorted(asked) == ["LM", "SR"]


def test_report_takes_the_stable_set_verdict_when_the_radius_fails(monkeypatch):
    """No verified Krylov eigenvalue at the rate: the report says so and keeps the stable
    set's verdict, at a stable and at an unstable rate (instead of a RuntimeError)."""
    prob, *_ = _problem()
    lr_star, _ = stab.max_stable_lr(prob, "dgd")

    def failing(self, s, method="auto", inside=None):
        raise RuntimeError("spectral_radius: ARPACK found no eigenvalue that verifies")

    monkeypatch.setattr(stab.StepOperator, "spectral_radius", failing)
    for lr, stable in ((0.5 * lr_star, True), (1.5 * lr_star, False)):
        rep = stab.stability(prob, "dgd", lr)
        assert rep.stable is stable and np.isnan(rep.spectral_radius)
        assert (rep.margin > 0) == stable and rep.lr_star == pytest.approx(lr_star)
        assert "not computed" in rep.method and "spectral radius not computed" in rep.describe()


def _kinked(edge: float, calls: list):
    """``f`` as a Krylov radius sees it: flat just below 0 on the stable side (the slow
    cluster's top), the leaving eigenvalue's smooth modulus on the unstable side (above
    ``edge``, or below it with ``mirror``); every call is logged with its side."""
    def f(s):
        calls.append(s)
        grow = (s - edge) * (1.0 + 3.0 * (s - edge))
        return max(grow, -1e-4)
    return f


def test_locate_edge_evaluates_the_stable_side_at_most_twice():
    """The edge to ``rtol``, returned as a verified stable rate, with at most two
    evaluations on the (expensive) stable side; Brent on the same function makes more."""
    import scipy.optimize

    edge = 0.7850886982
    calls: list = []
    found = stab._locate_edge(_kinked(edge, calls), 0.71874, 0.85473, True, 1e-9, "dgd",
                              far=1.0165)
    assert edge * (1 - 1e-9) <= found <= edge
    stable_side = [s for s in calls if s <= edge]
    # 10 evaluations: where f is convex through the three nearest unstable rates (here
    # everywhere) the next rate is aimed only SECANT_MIN_SHORT short of the secant's
    # estimate (13 evaluations without that; 18 with a fixed quarter step)
    assert len(stable_side) <= 2 and len(calls) <= 11
    brent: list = []
    scipy.optimize.brentq(_kinked(edge, brent), 0.71874, 0.85473, rtol=1e-9)
    assert len([s for s in brent if s <= edge]) > len(stable_side)
    # without a second unstable rate it starts by bisecting, and still converges
    found = stab._locate_edge(_kinked(edge, []), 0.71874, 0.85473, True, 1e-9, "dgd")
    assert edge * (1 - 1e-9) <= found <= edge


def test_locate_edge_where_f_is_concave_aims_by_the_quadratic_error_estimate():
    """Concave on the unstable side (the secant overshoots): the next rate is aimed short
    of the secant by twice its distance to the quadratic's root through the three nearest
    unstable rates, not twice the last two estimates' difference: 10 evaluations instead
    of 12, at most two on the stable side, the edge to rtol."""
    edge = 0.7850886982
    calls: list = []

    def f(s):
        calls.append(s)
        d = s - edge
        return max(d * (1.0 - 2.0 * d), -1e-4)

    found = stab._locate_edge(f, 0.71874, 0.85473, True, 1e-9, "dgd", far=0.9165)
    assert edge * (1 - 1e-9) <= found <= edge
    assert len([s for s in calls if s <= edge]) <= 2 and len(calls) <= 10


def test_quadratic_root_nearest_the_estimate():
    """Exact for a quadratic (the root nearest the estimate of its two); linear data give
    the line's root; no real root: None; fewer than three rates: None."""
    def pts(fn, us):
        return [(u, fn(u)) for u in us]

    quad = pts(lambda u: (u - 1.0) * (u - 3.0), [1.5, 1.8, 2.2])  # f < 0 there; roots 1, 3
    assert stab._quadratic_root(quad, 1.1) == pytest.approx(1.0, rel=1e-12)
    assert stab._quadratic_root(quad, 2.9) == pytest.approx(3.0, rel=1e-12)
    assert stab._quadratic_root(pts(lambda u: 2.0 * (u - 0.5), [1, 2, 4]), 0.0) == \
        pytest.approx(0.5, rel=1e-12)
    assert stab._quadratic_root(pts(lambda u: u * u + 1.0, [1, 2, 4]), 0.0) is None
    assert stab._quadratic_root(quad[:2], 1.1) is None


def test_convexity_toward_the_edge_from_the_three_nearest_unstable_rates():
    """Slopes falling toward the edge, on either side of it (the upper end of a stable
    interval, or the lower end of a window); fewer than three rates: unknown (False)."""
    def pts(f, rates):
        return [(u, f(u)) for u in rates]

    convex, concave = (lambda d: d * (1 + 3 * d)), (lambda d: d * (1 - 0.3 * d))
    edge = 1.0
    assert stab._convex_toward_edge(pts(lambda s: convex(s - edge), [1.1, 1.2, 1.4]))
    assert not stab._convex_toward_edge(pts(lambda s: concave(s - edge), [1.1, 1.2, 1.4]))
    assert stab._convex_toward_edge(pts(lambda s: convex(edge - s), [0.9, 0.8, 0.6]))
    assert not stab._convex_toward_edge(pts(lambda s: concave(edge - s), [0.9, 0.8, 0.6]))
    assert not stab._convex_toward_edge(pts(lambda s: convex(s - edge), [1.1, 1.2]))


def test_locate_edge_of_a_window_that_starts_above_zero():
    """The lower end of a stable window (unstable below it): the same, mirrored."""
    edge = 1.85

    def f(s):
        return max((edge - s) * (2.0 + s), -1e-4)

    found = stab._locate_edge(f, 1.5, 2.2, False, 1e-9, "momentum", far=1.2)
    assert edge <= found <= edge * (1 + 1e-9)
    with pytest.raises(stab.StabilityUndecided, match="between rates 1.5 and 2.2"):
        stab._locate_edge(lambda s: 1.0 if s < 2.2 else -1.0, 1.5, 2.2, False, 1e-300,
                          "momentum")


def test_krylov_stable_set_equals_the_dense_one(monkeypatch):
    """With the dense limit lowered, the Krylov search (secant on the unstable side)
    finds the stable set of the dense search to 1e-8: DGD and ATC on a periodic
    sequence (no theorem, no structured radius), and momentum's window away from 0."""
    from ntkdyn.graphs.sequences import periodic

    kern, y = _kernel(n=48, seed=5)
    cycle = periodic([graphs.mixing(graphs.topology("ring", 4)),
                      graphs.mixing(graphs.topology("star", 4))])
    cases = [(make_problem(kern, y, np.arange(48) % 4, cycle), a) for a in ("dgd", "atc")]
    cases.append((make_problem(np.eye(6), np.ones((6, 1)), np.arange(6) % 3, W3),
                  algorithms.momentum(0.9)))
    dense = [stab.stable_set(p, a) for p, a in cases]
    assert all(d.method == "brent-dense" for d in dense)
    monkeypatch.setattr(stab, "DENSE_MAX", 10)
    for (p, a), want in zip(cases, dense, strict=True):
        got = stab.stable_set(p, a)
        assert got.method == "secant-arpack"
        assert len(got.intervals) == len(want.intervals) >= 1
        for (lo, hi), (wlo, whi) in zip(got.intervals, want.intervals, strict=True):
            assert lo == pytest.approx(wlo, rel=1e-8, abs=0) and hi == pytest.approx(
                whi, rel=1e-8)
            assert _dense_rho(p, a, hi) <= 1 + stab.RHO_TOL  # the end is a stable rate


@pytest.mark.parametrize("name", ["dgd", "atc", "cta", "gd", "gradient_tracking", "diging",
                                  "extra", "next", algorithms.momentum(0.5)])
@pytest.mark.parametrize("topology", ["star", "path"])
def test_reversible_mixing_takes_the_crossing_of_its_symmetrised_matrix(name, topology,
                                                                        monkeypatch):
    """The "uniform" rule on an irregular graph gives a reversible, non-symmetric ``W``:
    the step is similar to the step with ``Pi^{1/2} W Pi^{-1/2}``, so the ``-1`` crossing
    of that symmetric matrix is the boundary, and it equals the dense search on ``W``
    itself (the shortcut switched off) to 1e-8."""
    kern, y = _kernel(n=30)
    w = graphs.mixing(graphs.topology(topology, 5), "uniform")
    assert not graphs.is_symmetric(w) and graphs.symmetrised(w) is not None
    prob = make_problem(kern, y, np.arange(30) % 5, w)
    found = stab.stable_set(prob, name)
    assert found.method.startswith("minus-one-crossing"), found.method
    monkeypatch.setattr(stab, "_crossing_mixing", lambda problem, crossing: None)
    scanned = stab.stable_set(prob, name)
    assert scanned.method == "brent-dense"
    assert found.lr_star == pytest.approx(scanned.lr_star, rel=1e-8)


@pytest.mark.parametrize("name", ["dgd", "atc", "cta", algorithms.momentum(0.5)])
def test_structured_radius_of_a_reversible_mixing_equals_the_dense_one(name):
    """A reversible non-symmetric ``W`` (lazy uniform rule on a star of 5: positive
    semi-definite, as ATC/CTA's radius above ``1 / curv`` needs): the structured radius
    (shift-invert) runs on the similar step with ``Pi^{1/2} W Pi^{-1/2}`` and equals the
    dense radius of the step with ``W`` to 1e-8, at stable and unstable rates."""
    kern, y = _kernel(n=30)
    w = graphs.mixing(graphs.topology("star", 5), "uniform", lazy=True)
    assert not graphs.is_symmetric(w)
    prob = make_problem(kern, y, np.arange(30) % 5, w)
    algo = algorithms.get_algorithm(name)
    op = stab.StepOperator(prob, algo)
    lr_star = stab.stable_set(prob, algo).lr_star
    for s in (0.3 * lr_star, 0.9 * lr_star, 1.2 * lr_star):
        fast = op.heavy_ball_radius(s) if algo.heavy_ball else op.structured_radius(s)
        assert fast is not None
        want = stab.spectral_radius(prob, algo, s, method="dense")
        assert fast == pytest.approx(want, rel=1e-8), (s, fast, want)


@pytest.mark.parametrize("topology", ["star", "path"])
def test_sufficient_bound_of_a_reversible_mixing_is_below_lr_star(topology):
    """The uniform rule (reversible, not symmetric): the sufficient bounds come from its
    symmetrised matrix (before: none, nan) and stay <= the exact lr* for DGD, ATC, CTA,
    P2PL and heavy-ball momentum, and the radius just below the bound is <= 1 (dense)."""
    w = graphs.mixing(graphs.topology(topology, 5), rule="uniform")
    assert not graphs.is_symmetric(w)
    kern, y = _kernel(n=20, seed=3)
    prob = make_problem(kern, y, np.arange(20) % 5, w)
    facts = stab.mixing_facts(prob)
    assert facts.lambda_min == pytest.approx(float(np.min(np.linalg.eigvals(w).real)),
                                             abs=1e-12)
    for algo in ("dgd", "atc", "cta", algorithms.p2pl(3, 2), algorithms.momentum(0.5)):
        bound = stab.sufficient_bound(prob, algo)
        assert np.isfinite(bound), algo
        assert bound <= stab.max_stable_lr(prob, algo)[0] * (1 + 1e-8), algo
        assert stab.spectral_radius(prob, algo, 0.999 * bound, method="dense") <= 1 + 1e-9


@pytest.mark.parametrize("where", ["inside", "stable", "unstable"])
def test_krylov_radius_is_one_single_eigenvalue_search(monkeypatch, where):
    """Without a structured radius (a periodic ring+star), the Krylov radius is one search
    for the eigenvalue of largest modulus alone, with CLUSTER_MAXITER restarts (before:
    QUICK_MAXITER restarts, then the same search again from the start where they did not
    suffice: about 530 products repeated at every stable rate of the 8-agent check); at a
    stable verdict outside the known stable set the leftmost eigenvalue alone beside it
    (QUICK_MAXITER restarts).  Equal to the dense radius to 1e-8 in each case."""
    from ntkdyn.graphs.sequences import periodic

    kern, y = _kernel(n=48, seed=5)
    cycle = periodic([graphs.mixing(graphs.topology("ring", 4)),
                      graphs.mixing(graphs.topology("star", 4))])
    prob = make_problem(kern, y, np.arange(48) % 4, cycle)
    found = stab.stable_set(prob, "dgd")
    s = (1.1 if where == "unstable" else 0.9) * found.lr_star
    dense = _dense_rho(prob, "dgd", s)
    asked, arpack, quick = [], stab._arpack, stab._one_eigenvalue

    def spy_arpack(op, which, k, dim):
        asked.append(("arpack", which, k))
        return arpack(op, which, k, dim)

    def spy_quick(lin, dim, maxiter=stab.QUICK_MAXITER, which="LM", start=None, rate=0.0):
        asked.append((which, maxiter))
        return quick(lin, dim, maxiter, which, start, rate)

    monkeypatch.setattr(stab, "_arpack", spy_arpack)
    monkeypatch.setattr(stab, "_one_eigenvalue", spy_quick)
    op = stab.StepOperator(prob, algorithms.get_algorithm("dgd"))
    got = op.spectral_radius(s, method="arpack", inside=where == "inside")
    assert abs(got - dense) <= 1e-8 * dense
    assert asked == [("LM", stab.CLUSTER_MAXITER)] + (
        [("SR", stab.QUICK_MAXITER)] if where == "stable" else [])


def _periodic_ring_star(n=48):
    from ntkdyn.graphs.sequences import periodic

    kern, y = _kernel(n=n, seed=5)
    cycle = periodic([graphs.mixing(graphs.topology("ring", 4)),
                      graphs.mixing(graphs.topology("star", 4))])
    return make_problem(kern, y, np.arange(n) % 4, cycle)


def _counted_radius(op, s):
    """``op``'s Krylov radius at ``s`` and the number of products it took."""
    count, matvec = [0], op.matvec

    def counting(v, rate):
        count[0] += 1 if v.ndim == 1 else v.shape[1]
        return matvec(v, rate)

    op.matvec = counting
    try:
        return op.spectral_radius(s, method="arpack"), count[0]
    finally:
        del op.matvec


def test_krylov_search_starts_from_the_last_eigenvector():
    """A Krylov radius starts from the unit random vector plus the last converged search's
    eigenvector (KrylovStart): at a stable rate after a nearby stable one it takes fewer
    products than from the random vector alone (the top of the slow cluster below +1 moves
    little between rates), with the same radius (1e-9 relative, and the dense one to
    1e-8).  Fails if the start ignores the last search."""
    prob = _periodic_ring_star()
    lr_star = stab.stable_set(prob, "dgd").lr_star
    algo = algorithms.get_algorithm("dgd")
    s1, s2 = 0.85 * lr_star, 0.9 * lr_star
    cold, cold_n = _counted_radius(stab.StepOperator(prob, algo), s2)
    op = stab.StepOperator(prob, algo)
    _counted_radius(op, s1)
    assert [rate for rate, _ in op.krylov_start.found] == [s1]
    warm, warm_n = _counted_radius(op, s2)
    assert warm == pytest.approx(cold, rel=1e-9)
    assert warm == pytest.approx(_dense_rho(prob, "dgd", s2), rel=1e-8)
    assert warm_n < cold_n


def test_krylov_start_after_a_stable_rate_still_finds_a_leaving_mode():
    """The warm start keeps the random vector's weight: after searches at stable rates
    (whose eigenvectors are the slow cluster's), the radius at an unstable rate is the
    leaving mode's, equal to the dense radius to 1e-8, and the start vector is the random
    one plus the nearest rate's eigenvector (never the old eigenvector alone)."""
    prob = _periodic_ring_star()
    lr_star = stab.stable_set(prob, "dgd").lr_star
    op = stab.StepOperator(prob, algorithms.get_algorithm("dgd"))
    for f in (0.5, 0.9):
        op.spectral_radius(f * lr_star, method="arpack")
    start = op.krylov_start
    s = 1.05 * lr_star
    nearest = max(start.found, key=lambda pair: pair[0])[1]
    assert start.vector(s) @ start.random == pytest.approx(1.0 + nearest @ start.random)
    got = op.spectral_radius(s, method="arpack")
    assert got > 1
    assert got == pytest.approx(_dense_rho(prob, "dgd", s), rel=1e-8)



def test_krylov_search_starts_from_the_nearest_rate_not_the_last():
    """After a stable rate and then an unstable one (the leaving mode's eigenvector), a
    search at a rate near the stable one starts from the stable rate's eigenvector: fewer
    products than after the unstable search alone, the same radius (1e-9 relative).  Fails
    if the start takes the last eigenvector (the order of a check: scan, edge, then the
    chosen rate)."""
    prob = _periodic_ring_star()
    lr_star = stab.stable_set(prob, "dgd").lr_star
    algo = algorithms.get_algorithm("dgd")
    both = stab.StepOperator(prob, algo)
    for f in (0.85, 1.05):
        _counted_radius(both, f * lr_star)
    edge_only = stab.StepOperator(prob, algo)
    _counted_radius(edge_only, 1.05 * lr_star)
    near, near_n = _counted_radius(both, 0.9 * lr_star)
    far, far_n = _counted_radius(edge_only, 0.9 * lr_star)
    assert near == pytest.approx(far, rel=1e-9)
    assert near_n < far_n

def test_krylov_stable_verdict_looks_for_a_mode_leaving_through_minus_one(monkeypatch):
    """DGD on a static ring above lr* leaves through -1.  Were the largest-modulus search
    to return a stable value (forced here: a misconvergence to the slow cluster), the
    leftmost eigenvalue beside it gives the radius: equal to the dense one to 1e-8
    (without that look the radius would read 0.5, stable)."""
    prob, *_ = _problem("ring", q=4, n=32)
    op = stab.StepOperator(prob, algorithms.get_algorithm("dgd"))
    s = 1.2 * stab.stable_set(prob, "dgd").lr_star
    vals = np.linalg.eigvals(op.dense(s))
    assert vals[np.argmax(np.abs(vals))].real < -1  # leaves through -1
    quick = stab._one_eigenvalue

    def lm_misses_it(lin, dim, maxiter=stab.QUICK_MAXITER, which="LM", start=None, rate=0.0):
        return 0.5 if which == "LM" else quick(lin, dim, maxiter, which, start, rate)

    monkeypatch.setattr(stab, "_one_eigenvalue", lm_misses_it)
    assert op.spectral_radius(s, method="arpack") == pytest.approx(
        _dense_rho(prob, "dgd", s), rel=1e-8)


@pytest.mark.parametrize("seed", range(6))
def test_periodic_dgd_bound_is_the_smallest_own_crossing(seed):
    """DGD on a periodic sequence of symmetric W_i: every step is symmetric in the same
    coordinates, so below the smallest of the matrices' own -1 crossings the period's
    radius is <= 1 (theory/stability.md section 2, periodic sequences).  On random
    sequences of 2-3 Metropolis matrices (per-agent rates on odd seeds): the dense radius
    at the bound is <= 1 + 1e-12, the bound lies between the rule's (1 + min lambda_min) /
    curv and the period's lr*, the scan evaluates no rate below it, and ATC keeps its
    rule's bound (its step is not symmetric)."""
    from ntkdyn.graphs.sequences import periodic
    from ntkdyn.kernels import analytic_ntk

    rng = np.random.default_rng(seed)
    q = int(rng.integers(3, 7))
    n = q * int(rng.integers(3, 8))
    names = rng.choice(["ring", "star", "complete", "path"], size=int(rng.integers(2, 4)))
    ws = [graphs.mixing(graphs.topology(str(name), q), "metropolis") for name in names]
    profile = rng.uniform(0.2, 1.0, q) if seed % 2 else np.ones(q)
    profile /= profile.max()
    prob = make_problem(analytic_ntk(rng.normal(size=(n, 4)), hidden_layers=2),
                        rng.normal(size=(n, 2)), np.arange(n) % q, periodic(ws))
    dgd = algorithms.get_algorithm("dgd")
    op = stab.StepOperator(prob, dgd, profile)
    bound, rule = stab.operator_bound(op), stab.schedule_sufficient_bound(prob, dgd, profile)
    assert op.spectral_radius(bound, method="dense") <= 1 + 1e-12
    cache: dict = {}
    lr_star = stab.stable_set(prob, dgd, profile, cache=cache).lr_star
    assert rule < bound <= lr_star * (1 + 1e-9)
    assert min(cache) >= bound  # (Brent may evaluate the bound itself, a bracket end)
    atc = stab.StepOperator(prob, algorithms.get_algorithm("atc"), profile)
    assert stab.operator_bound(atc) == stab.sufficient_bound(prob, "atc", profile)


def test_periodic_dgd_bound_of_one_repeated_matrix_is_its_lr_star():
    """A 'sequence' of one matrix repeated: the bound is that matrix's exact lr*."""
    from ntkdyn.graphs.sequences import periodic

    prob, kern, y, w = _problem("path", q=5, n=30)
    static = stab.stable_set(prob, "dgd").lr_star
    rep = make_problem(kern, y, np.arange(30) % 5, periodic([w, w]))
    assert stab.operator_bound(stab.StepOperator(rep, algorithms.get_algorithm("dgd"))) \
        == pytest.approx(static, rel=1e-10)


def test_local_curvature_of_a_periodic_operator_is_one_step():
    """``D H x`` of the operator of a periodic sequence is one step's, as a static W's (it
    read ``x - (I - D H)^2 x`` over the period before, which made each matrix's own -1
    crossing wrong: 0.797 for the ring of the 8-agent ring+star where the period's lr* is
    0.785)."""
    from ntkdyn.graphs.sequences import periodic

    prob, kern, y, w = _problem("ring", q=4, n=48)
    star = graphs.mixing(graphs.topology("star", 4))
    per = stab.StepOperator(make_problem(kern, y, np.arange(48) % 4, periodic([w, star])),
                            algorithms.get_algorithm("dgd"))
    static = stab.StepOperator(prob, algorithms.get_algorithm("dgd"))
    x = np.random.default_rng(0).standard_normal((4, static.r, 2))
    np.testing.assert_allclose(per.local_curvature(x), static.local_curvature(x), atol=1e-13)


def test_arpack_error_on_a_small_operator_falls_back_to_its_dense_spectrum(monkeypatch):
    """ARPACK can stop with error 3 ("no shifts could be applied") on a tiny operator whose
    basis is nearly the whole space (momentum on a 3-agent W, 36 dimensions, under a
    lowered DENSE_MAX: the path varied between processes and failed a CI run).  _arpack
    then takes the formed operator's dense spectrum: the k eigenvalues selected by
    'LM' / 'SR', equal to numpy's to 1e-12."""
    import scipy.sparse.linalg as spla

    rng = np.random.default_rng(3)
    a = rng.standard_normal((36, 36)) / 6
    op = spla.aslinearoperator(a)

    def fails(*args, **kwargs):
        raise spla.ArpackError(3)

    monkeypatch.setattr(stab.spla, "eigs", fails)
    vals = np.linalg.eigvals(a)
    lm = stab._arpack(op, "LM", 4, 36)
    assert np.allclose(np.sort(np.abs(lm)), np.sort(np.abs(vals))[-4:], rtol=1e-12)
    sr = stab._arpack(op, "SR", 3, 36)
    assert np.allclose(np.sort(sr.real), np.sort(vals.real)[:3], rtol=1e-12)


def test_parallel_dense_scan_equals_the_sequential_one(monkeypatch):
    """A stable-set scan of a dense operator of >= PARALLEL_DENSE_MIN dimensions evaluates
    its grid in threads (stability._dense_radii): the same radii, bit for bit, and the
    same stable set as one after the other (periodic ring+star, DGD, 320 dimensions)."""
    _, kern, y, w = _problem("ring", n=80)
    seq = graphs.periodic([w, graphs.mixing(graphs.topology("star", 4))])
    prob = make_problem(kern, y, np.arange(80) % 4, seq)
    assert stab.StepOperator(prob, algorithms.DGD).dim >= stab.PARALLEL_DENSE_MIN
    calls = []
    threaded = stab._dense_radii
    monkeypatch.setattr(stab, "_dense_radii", lambda op, rates, cache: (
        calls.append(len(rates)), threaded(op, rates, cache)))
    par_cache, seq_cache = {}, {}
    par = stab.stable_set(prob, "dgd", cache=par_cache)
    assert calls and calls[0] >= 10  # the grid went through the threads
    monkeypatch.setattr(stab, "PARALLEL_DENSE_MIN", 10**9)
    one = stab.stable_set(prob, "dgd", cache=seq_cache)
    assert par == one and par_cache == seq_cache
    assert par.method == "brent-dense" and len(calls) == 1


def test_kernel_round_off_inside_the_stable_set_is_not_an_instability():
    """A rank-16 kernel of 256 samples rounded to float32 has eigenvalues of about -1e-7
    where it should have 0: DGD's modes there grow by 1 + 4e-9 a step, so at 0.85 lr*
    (lr* from the exact -1 crossing) the report said "unstable", margin -0.0.  Inside
    the stable set a radius within ROUNDOFF_RHO of 1 is reported stable, with the radius
    and the words; a rate above lr* stays unstable."""
    rng = np.random.default_rng(0)
    n, q, r = 256, 8, 16
    f = rng.normal(size=(n, r))
    k = (f @ f.T / r).astype(np.float32).astype(np.float64)
    y = np.eye(4)[rng.integers(0, 4, n)]
    w = graphs.mixing(graphs.topology("erdos_renyi", q, p=0.3, seed=0), rule="metropolis")
    prob = make_problem((k + k.T) / 2, y, rng.permutation(n) % q, w)
    assert stab.StepOperator(prob, algorithms.DGD).dim > stab.DENSE_MAX  # Krylov radius
    lr_star, _ = stab.max_stable_lr(prob, "dgd")
    rep = stab.stability(prob, "dgd", 0.85 * lr_star)
    assert 1 + stab.RHO_TOL < rep.spectral_radius <= 1 + stab.ROUNDOFF_RHO
    assert rep.stable and rep.margin == pytest.approx(0.15, abs=1e-6)
    assert "inside the stable set: the modes the kernel barely sees" in rep.method
    above = stab.stability(prob, "dgd", 1.02 * lr_star)
    assert not above.stable and above.spectral_radius > 1 + stab.ROUNDOFF_RHO


def test_locate_edge_stops_at_the_stable_end_when_a_radius_is_too_costly():
    """An evaluation raising :class:`RadiusTooCostly` ends the search: the stable end of
    the bracket reached is returned, verified stable, and ``(edge, relative width)`` is
    recorded; without the list the error propagates."""
    edge = 0.7850886982

    def f(s):
        if abs(s - edge) < 1e-4 * edge:  # near the edge the radius would take minutes
            raise stab.RadiusTooCostly("too many products")
        return (s - edge) * (1.0 + 3.0 * (s - edge))

    coarse: list = []
    found = stab._locate_edge(f, 0.71874, 0.85473, True, 1e-9, "dgd", coarse=coarse)
    assert found < edge and f(found) < 0  # a rate verified stable
    ((at, width),) = coarse
    assert at == found and 0 < width and (edge - found) / found <= width
    with pytest.raises(stab.RadiusTooCostly):
        stab._locate_edge(f, 0.71874, 0.85473, True, 1e-9, "dgd")


def test_krylov_radius_beyond_its_product_budget_raises_and_the_edge_is_coarse(
        monkeypatch):
    """``product_budget`` bounds the Krylov products of one radius; the Krylov stable-set
    search runs under :data:`SEARCH_PRODUCTS`.  With 150 (the scan's two stable rates take
    365 and 389 products here, the edge's last step 195): those rates are decided by their
    leftmost eigenvalue and the edge is reported to the precision reached, both said in
    ``method``, and the upper end is still a rate verified stable near the exact edge."""
    from ntkdyn.graphs.sequences import periodic

    kern, y = _kernel(n=48, seed=5)
    cycle = periodic([graphs.mixing(graphs.topology("ring", 4)),
                      graphs.mixing(graphs.topology("star", 4))])
    problem = make_problem(kern, y, np.arange(48) % 4, cycle)
    exact = stab.stable_set(problem, "dgd")
    monkeypatch.setattr(stab, "DENSE_MAX", 10)
    op = stab.StepOperator(problem, algorithms.get_algorithm("dgd"))
    op.product_budget = 3
    with pytest.raises(stab.RadiusTooCostly, match="more than 3 products"):
        op.spectral_radius(0.5 * exact.intervals[0][1])
    assert stab.stable_set(problem, "dgd").method == "secant-arpack"  # default budget
    monkeypatch.setattr(stab, "SEARCH_PRODUCTS", 150)
    got = stab.stable_set(problem, "dgd")
    assert "more than 150 Krylov products (eigenvalues clustered" in got.method
    import re

    gap = float(re.search(r"located to (\S+) relative only", got.method).group(1))
    hi, want = got.intervals[0][1], exact.intervals[0][1]
    assert hi <= want * (1 + 1e-8) and (want - hi) / hi <= gap < 0.1  # the stated precision
    assert _dense_rho(problem, "dgd", hi) <= 1 + stab.RHO_TOL
